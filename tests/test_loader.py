"""Tests for svt.loader: exact frame readers, VideoDataset and collate_clips.

Test videos are generated here: frame ``k`` of video ``v`` shows the number ``64 * v + k``
as four base-4 digits, each a 16x16 grey block (levels 32/96/160/224, 64 apart), repeated
in three rows. Reading the blocks back identifies the frame despite H.264 compression.
"""

from __future__ import annotations

import multiprocessing
import pickle
import shutil
import subprocess

import numpy as np
import pytest
import torch

from conftest import INSTALL_FFMPEG, needs
from svt import loader
from svt.loader import (
    CPU_BACKENDS,
    VideoDataset,
    VideoDecodeError,
    collate_clips,
    read_frames,
    uniform_indices,
)
from svt.manifest import ManifestRow, write_rows

pytestmark = needs(shutil.which("ffmpeg"), "ffmpeg", INSTALL_FFMPEG)

W, H, FPS = 64, 48, 30
LEVELS = np.array([32, 96, 160, 224])
DIGITS = 4  # base-4 digits per frame: numbers up to 255


# Every CPU reader is a dependency of the project: one that does not import fails its tests
# (no silent drop from the parametrisation). torchcodec-cuda: tests/test_gpu_decode.py.
AVAILABLE = list(CPU_BACKENDS)
backends = pytest.mark.parametrize("backend", AVAILABLE)


def encode_number(n: int) -> np.ndarray:
    img = np.zeros((H, W, 3), np.uint8)
    for d in range(DIGITS):
        level = LEVELS[(n >> (2 * d)) & 3]
        img[:, d * 16 : (d + 1) * 16] = level  # every row of blocks holds the same digits
    return img


def decode_numbers(frames: torch.Tensor) -> list[int]:
    """Read back the numbers drawn by :func:`encode_number` (frames: N,H,W,3 uint8)."""
    x = frames.numpy().astype(np.float64).mean(axis=3)  # grey
    out = []
    for f in x:
        n = 0
        for d in range(DIGITS):
            block = f[:, d * 16 + 4 : (d + 1) * 16 - 4]  # inner columns avoid edge ringing
            n |= int(np.abs(LEVELS - block.mean()).argmin()) << (2 * d)
        out.append(n)
    return out


def make_video(path, num_frames: int, video_id: int = 0) -> None:
    """Encode like the decode stage: libx264, 30 fps, keyframe every 16, yuv420p, no audio."""
    raw = np.stack([encode_number(64 * video_id + k) for k in range(num_frames)]).tobytes()
    cmd = [
        "ffmpeg", "-nostdin", "-loglevel", "error", "-y",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{W}x{H}", "-r", str(FPS), "-i", "pipe:",
        "-c:v", "libx264", "-preset", "veryfast",
        "-g", "16", "-keyint_min", "16", "-sc_threshold", "0",
        "-pix_fmt", "yuv420p", "-an", "-movflags", "+faststart", str(path),
    ]
    subprocess.run(cmd, input=raw, check=True)


FRAMES = {0: 60, 1: 45, 2: 33}  # video id -> frame count


@pytest.fixture(scope="session")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    (root / "cls").mkdir()
    for vid, n in FRAMES.items():
        make_video(root / "cls" / f"v{vid}.mp4", n, vid)
    return root


@pytest.fixture(scope="session")
def video(videos):
    return videos / "cls" / "v0.mp4"


@pytest.fixture(scope="session")
def manifest(videos):
    rows = [
        ManifestRow(path=f"cls/v{vid}.mp4", label=10 + vid, label_name=f"class {vid}",
                    split="train" if vid < 2 else "val", frames=n, fps=float(FPS),
                    duration=n / FPS, width=W, height=H, source=f"raw/v{vid}.avi")
        for vid, n in FRAMES.items()
    ]
    path = videos / "manifest.csv"
    write_rows(path, rows, ManifestRow)
    return path


# --------------------------------------------------------------------------- readers


def test_encoding_roundtrip():
    frames = torch.from_numpy(np.stack([encode_number(n) for n in (0, 1, 63, 64 + 5, 255)]))
    assert decode_numbers(frames) == [0, 1, 63, 69, 255]


@backends
def test_all_frames_in_order(video, backend):
    frames = read_frames(video, list(range(60)), backend)
    assert frames.dtype == torch.uint8 and frames.shape == (60, H, W, 3)
    assert decode_numbers(frames) == list(range(60))


@backends
@pytest.mark.parametrize(
    "indices",
    [
        [0],
        [59],
        [59, 0],
        [17, 17, 3, 59, 0, 31, 32, 16, 15, 47, 48, 3],  # unsorted, duplicates, GOP edges
        [5, 40, 58],  # far apart: PyAV must re-seek
        [33, 34, 35, 36, 2],
    ],
)
def test_requested_frames_exact(video, backend, indices):
    frames = read_frames(video, np.array(indices), backend)
    assert frames.shape == (len(indices), H, W, 3)
    assert decode_numbers(frames) == indices


@backends
def test_many_scattered_frames(tmp_path_factory, backend):
    # >100 separate frames: the ffmpeg backend's select expression must still parse.
    path = tmp_path_factory.mktemp("long") / "long.mp4"
    make_video(path, 250)
    idx = list(range(0, 250, 2)) + [249, 1, 100]
    assert decode_numbers(read_frames(path, idx, backend)) == idx


@backends
def test_container_without_frame_count(video, tmp_path, backend):
    # Matroska stores no frame count: readers must still be exact and detect the end.
    mkv = tmp_path / "v.mkv"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(video),
                    "-c", "copy", str(mkv)], check=True)
    assert decode_numbers(read_frames(mkv, [59, 0, 30, 31], backend)) == [59, 0, 30, 31]
    with pytest.raises(IndexError, match="v.mkv"):
        read_frames(mkv, [3, 60], backend)


@backends
def test_empty_request(video, backend):
    assert read_frames(video, [], backend).shape == (0, H, W, 3)


def test_backends_agree_on_pixels(video):
    idx = [0, 7, 16, 31, 59]
    ref = read_frames(video, idx, AVAILABLE[0]).int()
    for backend in AVAILABLE[1:]:
        # YUV->RGB conversions may round differently; pixels must still match closely.
        diff = (read_frames(video, idx, backend).int() - ref).abs()
        assert diff.float().mean() < 1.0 and diff.max() <= 8, backend


def test_torchcodec_seek_modes_match(video, monkeypatch):
    idx = [59, 3, 16, 15, 40, 40]
    results = {}
    for mode in ("exact", "approximate"):
        monkeypatch.setattr(loader, "TORCHCODEC_SEEK_MODE", mode)
        results[mode] = read_frames(video, idx, "torchcodec")
    assert torch.equal(results["exact"], results["approximate"])


@backends
def test_odd_file_name(videos, video, backend, tmp_path):
    # Paths reach decoders as single arguments, never through a shell or a filtergraph.
    odd = tmp_path / "a b,c'd=e;$(x).mp4"
    shutil.copy(video, odd)
    assert decode_numbers(read_frames(odd, [4, 1], backend)) == [4, 1]


@backends
@pytest.mark.parametrize("bad", [60, 1000, -1])
def test_out_of_range_raises_index_error(video, backend, bad):
    with pytest.raises(IndexError) as info:
        read_frames(video, [0, bad], backend)
    msg = str(info.value)
    assert str(video) in msg and "60 frames" in msg


@backends
def test_corrupt_file_raises_clear_error(tmp_path, backend):
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(VideoDecodeError, match="corrupt.mp4"):
        read_frames(bad, [0], backend)


@backends
def test_missing_file_raises_clear_error(tmp_path, backend):
    with pytest.raises(VideoDecodeError, match="nothere.mp4"):
        read_frames(tmp_path / "nothere.mp4", [0], backend)


@backends
def test_truncated_file_raises_clear_error(video, tmp_path, backend):
    cut = tmp_path / "truncated.mp4"
    cut.write_bytes(video.read_bytes()[:2000])  # header intact (faststart), frames cut off
    with pytest.raises((VideoDecodeError, IndexError), match="truncated.mp4"):
        read_frames(cut, [0, 30, 59], backend)


def test_unknown_backend(video):
    with pytest.raises(ValueError, match="backend"):
        read_frames(video, [0], "opencv")


def test_uniform_indices():
    assert uniform_indices(0, 16, 4, 100).tolist() == [2, 6, 10, 14]
    assert uniform_indices(10, 8, 8, 100).tolist() == list(range(10, 18))
    assert uniform_indices(0, 60, 8, 60).tolist() == [3, 11, 18, 26, 33, 41, 48, 56]
    # clamped to the video; short windows repeat frames
    assert uniform_indices(50, 40, 4, 60).tolist() == [55, 59, 59, 59]
    assert uniform_indices(0, 2, 4, 60).tolist() == [0, 0, 1, 1]
    assert uniform_indices(0, 60, 16, 60).dtype == np.int64
    with pytest.raises(ValueError):
        uniform_indices(0, 10, 0, 60)


# --------------------------------------------------------------------------- dataset


class ToySampler:
    """Picklable sampler: one global clip, one random local clip, one fixed 2-frame clip."""

    def __call__(self, num_frames, fps, rng):
        assert fps == FPS
        start = int(rng.integers(0, num_frames - 8))
        return [
            uniform_indices(0, num_frames, 8, num_frames),
            uniform_indices(start, 8, 4, num_frames),
            np.array([num_frames - 1, 0]),
        ]


def expected_numbers(ds, i):
    row = ds.rows[i]
    vid = int(row.path[-5])
    clips = ToySampler()(row.frames, row.fps, ds.generator(i))
    return [[64 * vid + int(k) for k in c] for c in clips]


def test_dataset_item(manifest, videos):
    ds = VideoDataset(manifest, videos, ToySampler())
    assert len(ds) == 3
    item = ds[np.int64(1)]  # samplers may yield numpy integers
    assert item["label"] == 11 and item["index"] == 1
    assert item["path"].endswith("cls/v1.mp4")
    assert [tuple(c.shape) for c in item["clips"]] == [(8, H, W, 3), (4, H, W, 3), (2, H, W, 3)]
    assert [decode_numbers(c) for c in item["clips"]] == expected_numbers(ds, 1)
    with pytest.raises(IndexError):
        ds[3]


def test_dataset_split(manifest, videos):
    assert [r.path for r in VideoDataset(manifest, videos, ToySampler(), split="val").rows] == [
        "cls/v2.mp4"
    ]
    assert len(VideoDataset(manifest, videos, ToySampler(), split="train")) == 2
    with pytest.raises(ValueError, match="split"):
        VideoDataset(manifest, videos, ToySampler(), split="training")


def test_one_read_and_one_open_per_item(manifest, videos, monkeypatch):
    calls = []
    real = loader.read_frames

    def counting(path, indices, backend="pyav"):
        calls.append((path, len(indices)))
        return real(path, indices, backend)

    monkeypatch.setattr(loader, "read_frames", counting)
    import av

    opens = []
    real_open = av.open

    def counting_open(*args, **kwargs):
        opens.append(args[0])
        return real_open(*args, **kwargs)

    monkeypatch.setattr(av, "open", counting_open)
    ds = VideoDataset(manifest, videos, ToySampler())  # the default reader: pyav
    assert ds.backend == "pyav"
    assert calls == [] and opens == []  # nothing decoded at construction
    paths = [ds[i]["path"] for i in range(len(ds))]
    assert [p for p, _ in calls] == paths  # exactly one read per item ...
    assert all(n == 8 + 4 + 2 for _, n in calls)  # ... covering all three clips
    assert opens == paths  # ... and one open of each video


def test_reproducible_per_seed_epoch_index(manifest, videos):
    ds = VideoDataset(manifest, videos, ToySampler(), seed=7)

    def local_clip(d, i):
        return decode_numbers(d[i]["clips"][1])

    first = [local_clip(ds, i) for i in range(3)]
    # same (seed, epoch, i) -> same clips, whatever the access order or instance
    assert [local_clip(ds, i) for i in (2, 1, 0)] == first[::-1]
    assert [local_clip(VideoDataset(manifest, videos, ToySampler(), seed=7), i)
            for i in range(3)] == first
    # the generators differ across epochs, seeds and items
    def draws(d, i):
        return d.generator(i).integers(0, 2**32, 4).tolist()

    base = draws(ds, 0)
    assert draws(ds, 0) == base
    assert draws(ds, 1) != base
    ds.set_epoch(1)
    assert draws(ds, 0) != base
    ds.set_epoch(0)
    assert draws(VideoDataset(manifest, videos, ToySampler(), seed=8), 0) != base
    assert draws(ds, 0) == base


def test_pickles_without_decoder(manifest, videos):
    ds = VideoDataset(manifest, videos, ToySampler(), backend=AVAILABLE[0])
    before = ds[0]
    blob = pickle.dumps(ds)  # after decoding: nothing open may be left on the instance
    assert len(blob) < 10_000
    clone = pickle.loads(blob)
    after = clone[0]
    assert all(torch.equal(a, b) for a, b in zip(before["clips"], after["clips"]))


def test_decode_error_names_file(manifest, videos, tmp_path):
    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "v0.mp4").write_bytes(b"not a video at all" * 100)
    ds = VideoDataset(manifest, tmp_path, ToySampler(), backend=AVAILABLE[0])
    with pytest.raises(VideoDecodeError, match="v0.mp4"):
        ds[0]


def test_frame_count_mismatch_is_an_error_not_index_error(videos, tmp_path):
    # The manifest claims more frames than the file holds: must fail loudly, naming the
    # file, and not as IndexError (which would silently end ``for item in dataset``).
    row = ManifestRow(path="cls/v2.mp4", label=0, label_name="x", split="train", frames=90,
                      fps=float(FPS), duration=3.0, width=W, height=H, source="x")
    csv = tmp_path / "m.csv"
    write_rows(csv, [row], ManifestRow)
    ds = VideoDataset(csv, videos, ToySampler(), backend=AVAILABLE[0])
    with pytest.raises(VideoDecodeError, match="v2.mp4") as info:
        ds[0]
    assert not isinstance(info.value, IndexError)


def test_collate_shapes():
    clips = [torch.zeros(8, 4, 4, 3, dtype=torch.uint8), torch.zeros(2, 4, 4, 3, dtype=torch.uint8)]
    item = {"clips": clips, "label": 3, "index": 5, "path": "p"}
    batch = collate_clips([item, dict(item, label=4, index=6)])
    assert [tuple(c.shape) for c in batch["clips"]] == [(2, 8, 4, 4, 3), (2, 2, 4, 4, 3)]
    assert batch["label"].dtype == torch.long and batch["label"].tolist() == [3, 4]
    assert batch["index"].tolist() == [5, 6]
    bad = dict(item, clips=[torch.zeros(7, 4, 4, 3), item["clips"][1]])
    with pytest.raises(ValueError, match="clip 0"):
        collate_clips([item, bad])


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(),
                    reason="needs the fork start method: an OS feature (Linux, macOS), nothing to "
                           "install; run the tests there")
def test_dataloader_two_workers(manifest, videos):
    ds = VideoDataset(manifest, videos, ToySampler(), seed=3)
    ds.set_epoch(2)
    dl = torch.utils.data.DataLoader(
        ds, batch_size=2, num_workers=2, collate_fn=collate_clips,
        multiprocessing_context="fork", shuffle=False,
    )
    batches = list(dl)
    assert [b["index"].tolist() for b in batches] == [[0, 1], [2]]
    assert [b["label"].tolist() for b in batches] == [[10, 11], [12]]
    for b in batches:
        shapes = [tuple(c.shape[1:]) for c in b["clips"]]
        assert shapes == [(8, H, W, 3), (4, H, W, 3), (2, H, W, 3)]
        for j, i in enumerate(b["index"].tolist()):
            got = [decode_numbers(c[j]) for c in b["clips"]]
            assert got == expected_numbers(ds, i)  # workers used the parent's (seed, epoch)


@pytest.fixture(scope="session")
def fast_decode_video(tmp_path_factory):
    """60 numbered frames encoded with the decode stage's options (decode.fast_decode)."""
    from svt.video import EncodeSettings, encoder_options

    path = tmp_path_factory.mktemp("fast") / "fast.mp4"
    raw = np.stack([encode_number(k) for k in range(60)]).tobytes()
    options = [a for k, v in encoder_options(EncodeSettings()).items() for a in (f"-{k}", str(v))]
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "rawvideo",
                    "-pix_fmt", "rgb24", "-s", f"{W}x{H}", "-r", str(FPS), "-i", "pipe:",
                    *options, "-an", str(path)], input=raw, check=True)
    return path


def test_pyav_skips_only_unwanted_non_reference_frames(fast_decode_video, monkeypatch):
    """The PyAV reader does not decode B-frames nobody references unless they are wanted,
    and every frame it returns is still the right one."""
    verdicts = []
    real = loader._h264_is_reference

    def spy(data, nal_bytes):
        verdicts.append(real(data, nal_bytes))
        return verdicts[-1]

    monkeypatch.setattr(loader, "_h264_is_reference", spy)
    wanted = [1, 2, 5, 22, 23, 41, 58, 59]
    assert decode_numbers(read_frames(fast_decode_video, wanted, "pyav")) == wanted
    skipped = verdicts.count(False)
    assert skipped >= 10, verdicts  # x264 default 3 B-frames between references: ~half skippable
    verdicts.clear()
    assert decode_numbers(read_frames(fast_decode_video, list(range(60)), "pyav")) == list(range(60))
    assert verdicts == []  # every frame wanted: nothing even inspected, nothing skipped
    # agrees with torchcodec, which decodes every frame, pixel for pixel up to YUV->RGB rounding
    ref = read_frames(fast_decode_video, wanted, "torchcodec").int()
    assert (read_frames(fast_decode_video, wanted, "pyav").int() - ref).abs().max() <= 8


def test_h264_reference_flag_reads_the_first_slice():
    # 4-byte length prefixes: an SEI (type 6) before the slice must not decide
    sei, ref_slice, nonref_slice = b"\x06\x05\x01", b"\x41\x9a\x00", b"\x01\x9e\x00"
    unit = lambda nal: len(nal).to_bytes(4, "big") + nal  # noqa: E731
    assert loader._h264_is_reference(memoryview(unit(sei) + unit(ref_slice)), 4)
    assert not loader._h264_is_reference(memoryview(unit(sei) + unit(nonref_slice)), 4)
    assert loader._h264_is_reference(memoryview(b"\x00\x00"), 4)  # unreadable: decode it


def test_persistent_workers_follow_the_epochs(manifest, videos):
    """Workers that live across epochs keep the dataset object they started with; the
    training sampler's (epoch, index) pairs still give each epoch its own, reproducible clips."""
    from svt.pretrain import EpochSampler

    ds = VideoDataset(manifest, videos, ToySampler(), split="train", seed=3)
    sampler = EpochSampler(len(ds), batch_size=1, rank=0, world=1, seed=3)
    dl = torch.utils.data.DataLoader(ds, batch_size=None, sampler=sampler, num_workers=2,
                                     persistent_workers=True, multiprocessing_context="fork")
    seen = []
    for epoch in range(3):  # three passes over the same two worker processes
        sampler.set_epoch(epoch)
        items = list(dl)
        assert [it["epoch"] for it in items] == [epoch] * len(ds)
        expected = [ds[key] for key in sampler]  # the main process, epoch from the key
        for it, ref in zip(items, expected):
            assert it["index"] == ref["index"]
            assert decode_numbers(it["clips"][1]) == decode_numbers(ref["clips"][1])
        seen.append(sorted((it["index"], tuple(decode_numbers(it["clips"][1]))) for it in items))
    assert ds.epoch == 0 and len({tuple(s) for s in seen}) > 1  # the clips change with the epoch
