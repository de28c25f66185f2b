"""svt.checkpoint: atomic replacement under a real SIGKILL, damaged files named in the error,
and RNG states that restore the very same random streams."""

from __future__ import annotations

import pickle
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from svt import checkpoint as ckpt


def test_latest_is_none_until_a_checkpoint_exists(tmp_path):
    assert ckpt.latest(tmp_path) is None
    ckpt.save_atomic({"step": 1}, tmp_path / ckpt.LAST)
    assert ckpt.latest(tmp_path) == tmp_path / ckpt.LAST


def test_a_save_that_fails_leaves_the_previous_checkpoint(tmp_path):
    last = tmp_path / ckpt.LAST
    ckpt.save_atomic({"step": 1, "w": torch.ones(3)}, last)
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        ckpt.save_atomic({"step": 2, "w": torch.zeros(1000), "bad": lambda: 0}, last)  # fails mid-write
    assert ckpt.load(last)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == [ckpt.LAST]  # no temporary left behind


WRITER = """
import sys, torch
from svt import checkpoint as ckpt
step = 0
while True:  # ~32 MB a save: the kill lands inside a write most of the time
    step += 1
    ckpt.save_atomic({"step": step, "w": torch.full((8_000_000,), float(step))}, sys.argv[1])
    print(step, flush=True)
"""


def test_sigkill_during_saves_leaves_a_whole_checkpoint(tmp_path):
    """A real hard kill, at several moments while checkpoints are being written: last.pth is
    always a whole checkpoint, the last one completed or the one after it."""
    last = tmp_path / ckpt.LAST
    torn = 0  # kills that landed inside a write: they leave the temporary file behind
    for delay in (0.05, 0.3, 0.7):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(last)], stdout=subprocess.PIPE,
                                text=True)
        assert proc.stdout.readline().strip() == "1"  # one save done
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        done = [int(line) for line in proc.stdout.read().split()]
        proc.wait()
        state = ckpt.load(last)
        assert state["step"] >= (done[-1] if done else 1)
        assert torch.equal(state["w"], torch.full((8_000_000,), float(state["step"])))
        for tmp in tmp_path.glob(".last.pth.tmp*"):
            torn += 1
            tmp.unlink()
    assert torn, "no kill landed inside a write: the test proved nothing"


def test_damaged_checkpoints_are_named_in_the_error(tmp_path):
    good = ckpt.save_atomic({"step": 7, "w": torch.randn(10_000)}, tmp_path / "good.pth")
    data = good.read_bytes()
    partial = tmp_path / "partial.pth"
    partial.write_bytes(data[: len(data) // 2])  # a copy cut short (disk full, a bad transfer)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00not a checkpoint" * 100)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    for path in (partial, garbage, empty):
        with pytest.raises(ckpt.CheckpointError, match=f"{path}: not a readable checkpoint"):
            ckpt.load(path)
    with pytest.raises(FileNotFoundError):
        ckpt.load(tmp_path / "missing.pth")


class NotWeights:  # an arbitrary object: weights_only loading must refuse to build it
    pass


def test_a_checkpoint_holding_code_is_refused(tmp_path):
    path = tmp_path / "unsafe.pth"
    torch.save({"step": 1, "obj": NotWeights()}, path)
    with pytest.raises(ckpt.CheckpointError, match="unsafe.pth: not a readable checkpoint"):
        ckpt.load(path)


def draws() -> tuple:
    return (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(),
            np.random.standard_normal(2).tolist(), torch.rand(3).tolist(), torch.randn(2).tolist())


def test_rng_states_survive_a_checkpoint_and_restore_the_same_streams(tmp_path):
    ckpt.seed_all(123)
    draws()  # mid-stream, with a cached Gaussian in Python's and NumPy's generators
    random.gauss(0, 1)
    np.random.standard_normal()
    path = ckpt.save_atomic({"rng": ckpt.rng_state()}, tmp_path / ckpt.LAST)
    expected = draws()
    ckpt.seed_all(999)  # a fresh process would start elsewhere
    assert draws() != expected
    ckpt.set_rng_state(ckpt.load(path)["rng"])  # through weights_only loading
    assert draws() == expected


def test_seed_all_makes_every_generator_repeat():
    ckpt.seed_all(5)
    first = draws()
    ckpt.seed_all(5)
    assert draws() == first
    ckpt.seed_all(6)
    assert draws() != first
