"""Training-data loading: exact frame readers and the clip dataset.

Every reader returns ``uint8`` frames shaped ``(N, H, W, 3)`` (RGB) in the order of the
requested indices. Each distinct frame is decoded once: indices are sorted and made
unique, the backend decodes those, and the result is gathered back into request order.

Backends (all single-threaded: DataLoader workers supply the parallelism):

* ``"torchcodec"`` - torchcodec's ``VideoDecoder`` (the default, and the fastest here;
  see ``bench/decoders.py``).
* ``"pyav"`` - PyAV, seeking to keyframes and decoding forward.
* ``"ffmpeg"`` - an ``ffmpeg`` subprocess with a ``select`` filter, frames piped as raw RGB.

Frame indices count presentation order from 0. The decode stage writes constant-fps
H.264 with a keyframe every 16 frames, so index <-> timestamp is exact.
"""

from __future__ import annotations

import itertools
import operator
import os
import time
from fractions import Fraction
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from svt.manifest import SPLITS, ManifestRow, read_rows

BACKENDS = ("torchcodec", "pyav", "ffmpeg")

# Decode-stage keyframe interval; PyAV uses it to decide when a seek beats decoding
# forward until it has seen two keyframes and can measure the real interval.
DEFAULT_GOP = 16

# torchcodec "exact" mode builds a frame index when the file is opened; "approximate"
# trusts the header instead. For mp4 the index comes from the moov atom, so opening costs
# well under a millisecond, and knowing the keyframes lets torchcodec decode forward
# instead of seeking for each frame: exact mode read an SVT sample 1.1-1.8x faster than
# approximate mode on decode-stage-like videos (bench/decoders.py), without trusting headers.
TORCHCODEC_SEEK_MODE = os.environ.get("SVT_TORCHCODEC_SEEK_MODE", "exact")


class VideoDecodeError(RuntimeError):
    """A video could not be opened or decoded; the message names the file."""


# --------------------------------------------------------------------------- readers


def read_frames(path: str | os.PathLike, indices, backend: str = "torchcodec") -> torch.Tensor:
    """Decode frames ``indices`` of ``path``; returns uint8 ``(len(indices), H, W, 3)``.

    Duplicates and any order are allowed. Raises ``IndexError`` (naming the file and its
    frame count) for an index outside the video, and ``VideoDecodeError`` (naming the
    file) when the file cannot be opened or decoded.
    """
    try:
        reader = _READERS[backend]
    except KeyError:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}") from None
    path = os.fspath(path)
    idx = np.asarray(indices)
    if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
        raise TypeError(f"indices must be a 1-D sequence of integers, got {idx.dtype} {idx.shape}")
    unique, inverse = np.unique(idx.astype(np.int64), return_inverse=True)
    frames = reader(path, unique.tolist())
    return frames[torch.from_numpy(inverse.reshape(-1))]


def _check_range(path: str, unique: list[int], num_frames: int | None) -> None:
    """Raise IndexError for indices outside the video; ``None``: count unknown (yet)."""
    if not unique:
        return
    if unique[0] < 0:
        bad = unique[0]
    elif num_frames is not None and unique[-1] >= num_frames:
        bad = unique[-1]
    else:
        return
    count = f"video has {num_frames} frames" if num_frames is not None else "frame count unknown"
    raise IndexError(f"{path}: frame index {bad} out of range ({count})")


def _read_torchcodec(path: str, unique: list[int]) -> torch.Tensor:
    from torchcodec.decoders import VideoDecoder

    try:
        decoder = VideoDecoder(
            path, dimension_order="NHWC", seek_mode=TORCHCODEC_SEEK_MODE, num_ffmpeg_threads=1
        )
    except Exception as exc:  # torchcodec raises RuntimeError/ValueError with no file name
        raise VideoDecodeError(f"{path}: cannot open video ({exc})") from exc
    meta = decoder.metadata
    _check_range(path, unique, meta.num_frames)
    if not unique:
        return torch.empty((0, meta.height, meta.width, 3), dtype=torch.uint8)
    try:
        return decoder.get_frames_at(unique).data
    except Exception as exc:
        raise VideoDecodeError(f"{path}: cannot decode frames ({exc})") from exc


def _read_pyav(path: str, unique: list[int]) -> torch.Tensor:
    import av

    try:
        container = av.open(path)
    except Exception as exc:
        raise VideoDecodeError(f"{path}: cannot open video ({exc})") from exc
    try:
        if not container.streams.video:
            raise VideoDecodeError(f"{path}: no video stream")
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1  # parallelism comes from DataLoader workers
        num_frames = stream.frames or None  # mp4 headers store it; 0 means unknown
        _check_range(path, unique, num_frames)
        if not unique:
            cc = stream.codec_context
            return torch.empty((0, cc.height, cc.width, 3), dtype=torch.uint8)
        try:
            frames = _pyav_decode(container, stream, unique)
        except (av.error.FFmpegError, OSError) as exc:
            raise VideoDecodeError(f"{path}: cannot decode frames ({exc})") from exc
        if len(frames) < len(unique):
            missing = unique[len(frames)]
            raise IndexError(
                f"{path}: frame index {missing} out of range "
                f"(video ended; header says {num_frames or 'unknown'} frames)"
            )
        return torch.from_numpy(np.stack(frames))
    finally:
        container.close()


def _pyav_decode(container, stream, unique: list[int]) -> list[np.ndarray]:
    """Decode the sorted, unique ``unique`` frames, seeking only when it saves work.

    Returns fewer frames than asked when the file ends early; the caller reports that.
    """
    rate = stream.average_rate or stream.guessed_rate
    if not rate:
        raise VideoDecodeError(f"{container.name}: unknown frame rate")
    tb = stream.time_base
    start = stream.start_time or 0

    # Frame index <-> pts; exact for constant-fps files (Fractions, no float rounding).
    def to_index(pts: int) -> int:
        return round((pts - start) * tb * rate)

    def to_pts(index: int) -> int:
        return start + int(Fraction(index) / rate / tb)

    def seek(target: int):
        # Some demuxers (by dts, by byte position) can land on a keyframe just after
        # pts(target); mp4 from the decode stage does not, but step the seek point back
        # until we land at or before the target, and finally rewind the whole file.
        back = 0
        while True:
            point = target - back
            if point > 0:
                container.seek(to_pts(point), stream=stream, backward=True, any_frame=False)
            else:
                container.seek(0)  # container start (av.time_base units): before any frame
            frames = container.decode(stream)
            first = next(frames, None)
            if first is None:
                if point <= 0:
                    return iter(())
            elif point <= 0 or first.pts is None or to_index(first.pts) <= target:
                return itertools.chain([first], frames)
            back = max(2 * back, DEFAULT_GOP)

    out: list[np.ndarray] = []
    frames = None  # decode iterator; survives across targets while we decode forward
    pos = -1  # index of the last decoded frame
    last_key = None  # last keyframe decoded since the latest seek
    gop = DEFAULT_GOP  # keyframe interval, measured between consecutive keyframes
    for target in unique:
        # Seek at the start, and when the target lies at/after the next keyframe:
        # decoding from that keyframe beats decoding every frame up to it.
        ahead = target > pos + 1 and last_key is not None and target >= last_key + gop
        if frames is None or ahead:
            frames = seek(target)
            last_key = None
        for frame in frames:
            if frame.pts is None:
                continue
            pos = to_index(frame.pts)
            if frame.key_frame:
                if last_key is not None and pos > last_key:
                    gop = pos - last_key
                last_key = pos
            if pos >= target:
                break
        else:
            return out  # end of file before ``target``
        if pos != target:
            raise VideoDecodeError(
                f"{container.name}: frame {target} missing (pts jumped to frame {pos}); "
                "is the video constant frame rate?"
            )
        out.append(frame.to_ndarray(format="rgb24"))
    return out


def _read_ffmpeg(path: str, unique: list[int]) -> torch.Tensor:
    import ffmpeg

    try:
        info = ffmpeg.probe(path, select_streams="v:0")
    except ffmpeg.Error as exc:
        raise VideoDecodeError(f"{path}: cannot open video ({_stderr_tail(exc)})") from exc
    if not info.get("streams"):
        raise VideoDecodeError(f"{path}: no video stream")
    st = info["streams"][0]
    width, height = int(st["width"]), int(st["height"])
    num_frames = int(st.get("nb_frames") or 0) or None  # mp4 headers store it
    _check_range(path, unique, num_frames)
    if not unique:
        return torch.empty((0, height, width, 3), dtype=torch.uint8)
    # select keeps the wanted frames (n counts presentation order); passthrough stops
    # ffmpeg from duplicating them back to the input rate; -frames:v ends decoding at the
    # last wanted frame.
    stream = ffmpeg.input(path, threads=1).output(
        "pipe:",
        vf=f"select={_select_expr(unique)}",
        format="rawvideo",
        pix_fmt="rgb24",
        fps_mode="passthrough",
        an=None,
        sn=None,
        **{"frames:v": len(unique)},
    )
    try:
        raw, _ = ffmpeg.run(
            stream, cmd=["ffmpeg", "-nostdin", "-loglevel", "error"],
            capture_stdout=True, capture_stderr=True,
        )
    except ffmpeg.Error as exc:
        raise VideoDecodeError(f"{path}: cannot decode frames ({_stderr_tail(exc)})") from exc
    got = len(raw) // (height * width * 3)
    if got < len(unique):
        raise IndexError(
            f"{path}: frame index {unique[got]} out of range (decoded only {got} of "
            f"{len(unique)} wanted frames; header says {num_frames or 'unknown'} frames)"
        )
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(len(unique), height, width, 3)


def _select_expr(unique: list[int]) -> str:
    """A select expression true exactly on frames ``unique`` (sorted, distinct).

    Consecutive runs become one between(); terms are summed as a balanced tree because
    FFmpeg's expression parser rejects flat sums of more than ~100 terms. Commas are
    escaped ("\\,") as the expression sits inside a filtergraph.
    """
    terms, i = [], 0
    while i < len(unique):
        j = i
        while j + 1 < len(unique) and unique[j + 1] == unique[j] + 1:
            j += 1
        a, b = unique[i], unique[j]
        terms.append(f"eq(n\\,{a})" if a == b else f"between(n\\,{a}\\,{b})")
        i = j + 1

    def tree(ts: list[str]) -> str:
        if len(ts) == 1:
            return ts[0]
        mid = len(ts) // 2
        return f"({tree(ts[:mid])}+{tree(ts[mid:])})"

    return tree(terms)


def _stderr_tail(exc) -> str:
    text = (getattr(exc, "stderr", None) or b"").decode("utf-8", "replace").strip()
    return text.splitlines()[-1] if text else str(exc)


_READERS: dict[str, Callable[[str, list[int]], torch.Tensor]] = {
    "torchcodec": _read_torchcodec,
    "pyav": _read_pyav,
    "ffmpeg": _read_ffmpeg,
}


# --------------------------------------------------------------------------- sampling


def uniform_indices(start: float, span: float, num: int, num_frames: int) -> np.ndarray:
    """``num`` evenly spaced frame indices in ``[start, start + span)``, clamped to the video.

    Each index sits at the centre of one of ``num`` equal sub-intervals, so clips cover the
    window symmetrically; when ``span < num`` frames repeat (short videos stay usable).
    """
    if num <= 0 or num_frames <= 0:
        raise ValueError(f"need num > 0 and num_frames > 0, got num={num}, num_frames={num_frames}")
    centres = start + (np.arange(num) + 0.5) * (span / num)
    return np.clip(np.floor(centres).astype(np.int64), 0, num_frames - 1)


ClipSampler = Callable[[int, float, np.random.Generator], Sequence[np.ndarray]]


# --------------------------------------------------------------------------- dataset


class VideoDataset(torch.utils.data.Dataset):
    """Videos of a decode-stage manifest, each returned as several clips.

    ``clip_sampler(num_frames, fps, generator)`` returns one index array per clip (e.g.
    SVT's 2 global + 8 local views). ``__getitem__`` decodes the union of those indices
    with one ``read_frames`` call, i.e. one decoder open per video.

    Randomness comes from a generator seeded by ``(seed, epoch, i)``: an item is the same
    whichever worker loads it, and changes between epochs. Call ``set_epoch`` before
    creating each epoch's DataLoader iterator (with ``persistent_workers=True`` workers keep
    the epoch they started with).

    No decoder is held between items, so the dataset pickles and forks cleanly into
    DataLoader workers.
    """

    def __init__(
        self,
        manifest_csv: str | os.PathLike,
        videos_root: str | os.PathLike,
        clip_sampler: ClipSampler,
        backend: str = "torchcodec",
        split: str | None = None,
        seed: int = 0,
    ):
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
        if split is not None and split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        rows = read_rows(manifest_csv, ManifestRow)
        self.rows: list[ManifestRow] = [r for r in rows if split is None or r.split == split]
        self.videos_root = Path(videos_root)
        self.clip_sampler = clip_sampler
        self.backend = backend
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.rows)

    def generator(self, i: int) -> np.random.Generator:
        """The per-item generator; SeedSequence mixes the three numbers well."""
        return np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch, i]))

    def __getitem__(self, i: int) -> dict:
        i = operator.index(i)  # samplers may hand numpy or torch integers
        if not 0 <= i < len(self.rows):
            raise IndexError(f"item {i} out of range (dataset has {len(self.rows)} videos)")
        row = self.rows[i]
        path = str(self.videos_root / row.path)
        clips_idx = [np.asarray(c, dtype=np.int64).reshape(-1) for c in
                     self.clip_sampler(row.frames, row.fps, self.generator(i))]
        if not clips_idx:
            raise ValueError(f"clip_sampler returned no clips for {path}")
        t0 = time.perf_counter()
        try:
            frames = read_frames(path, np.concatenate(clips_idx), self.backend)
        except Exception as exc:
            # Re-raise as one error type: a bare IndexError escaping __getitem__ would end
            # a plain ``for item in dataset`` loop silently instead of reporting the file.
            where = f"item {i}" if path in str(exc) else f"item {i} ({path})"
            raise VideoDecodeError(f"{where}: {exc}") from exc
        clips = list(torch.split(frames, [len(c) for c in clips_idx]))
        # the worker's own time for this item: the trainer reports loader throughput from it
        return {"clips": clips, "label": row.label, "index": i, "path": path,
                "load_s": time.perf_counter() - t0}


def collate_clips(batch: list[dict]) -> dict:
    """Stack clip ``k`` of every item into ``(B, T_k, H, W, 3)``; labels/indices to tensors."""
    n = len(batch[0]["clips"])
    if any(len(item["clips"]) != n for item in batch):
        raise ValueError("items in a batch have different numbers of clips")
    clips = []
    for k in range(n):
        shapes = {tuple(item["clips"][k].shape) for item in batch}
        if len(shapes) != 1:
            raise ValueError(f"clip {k} has different shapes across the batch: {sorted(shapes)}")
        clips.append(torch.stack([item["clips"][k] for item in batch]))
    return {
        "clips": clips,
        "label": torch.tensor([item["label"] for item in batch], dtype=torch.long),
        "index": torch.tensor([item["index"] for item in batch], dtype=torch.long),
        "path": [item["path"] for item in batch],
        "load_s": sum(item.get("load_s", 0.0) for item in batch),
    }
