"""svt.atomic: the one way files are written in place (manifests, index, curation, checkpoints,
encoded videos): the target is the old file or the new one, never half of one."""

from __future__ import annotations

import pytest
import torch

from svt.atomic import atomic_path, atomic_write, write_text_atomic
from svt.checkpoint import load, save_atomic


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "sub" / "m.csv"
    write_text_atomic(target, "old\n")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as f:
            f.write("half of the new")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["m.csv"]
    with atomic_write(target, newline="") as f:
        f.write("a,b\r\nünï,2\r\n")
    assert target.read_bytes() == "a,b\r\nünï,2\r\n".encode()


def test_atomic_path_for_writers_that_take_a_file_name(tmp_path):
    dst = tmp_path / "v.mp4"
    with atomic_path(dst) as tmp:
        assert tmp.parent == dst.parent and tmp != dst
        tmp.write_bytes(b"encoded")
        assert not dst.exists()  # nothing at the target until the block ends
    assert dst.read_bytes() == b"encoded"
    with pytest.raises(ValueError):
        with atomic_path(dst) as tmp:
            tmp.write_bytes(b"rejected output")
            raise ValueError("check_output failed")
    assert dst.read_bytes() == b"encoded" and list(tmp_path.iterdir()) == [dst]


def test_save_atomic_round_trip_loads_weights_only(tmp_path):
    obj = {"w": torch.arange(4.0), "step": 3, "name": "x"}
    path = save_atomic(obj, tmp_path / "ckpt" / "last.pth")
    got = load(path)
    assert torch.equal(got["w"], obj["w"]) and got["step"] == 3 and got["name"] == "x"
