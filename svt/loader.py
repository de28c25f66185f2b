"""Training-data loading: exact frame readers and the clip dataset.

Every reader returns ``uint8`` frames shaped ``(N, H, W, 3)`` (RGB) in the order of the
requested indices. Each distinct frame is decoded once: indices are sorted and made
unique, the backend decodes those, and the result is gathered back into request order.

Backends (the CPU ones single-threaded: DataLoader workers supply the parallelism):

* ``"pyav"`` - PyAV, seeking to keyframes, decoding forward and skipping the packets of
  unwanted non-reference frames (the default: the fastest per SVT sample on the decode
  stage's videos, see ``bench/decoders.py``).
* ``"torchcodec"`` - torchcodec's ``VideoDecoder`` (the fastest for whole videos).
* ``"torchcodec-cuda"`` - torchcodec on the GPU's video decoder (NVDEC); frames come back
  on the current CUDA device. :func:`check_gpu_decoder` says what is missing when it cannot run.
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

BACKENDS = ("pyav", "torchcodec", "ffmpeg", "torchcodec-cuda")
# Readers that decode on the GPU (NVDEC) and return CUDA tensors. CUDA cannot start in a
# forked DataLoader worker, so these decode in the process that trains (see loader_workers).
GPU_BACKENDS = ("torchcodec-cuda",)
CPU_BACKENDS = tuple(b for b in BACKENDS if b not in GPU_BACKENDS)


def cpu_backend(backend: str) -> str:
    """The CPU reader of the same library: evaluation stages decode few frames per video in
    CPU jobs, so a GPU training decoder maps to its CPU twin there."""
    return "torchcodec" if backend in GPU_BACKENDS else backend

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


def read_frames(path: str | os.PathLike, indices, backend: str = "pyav") -> torch.Tensor:
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
    inverse = inverse.reshape(-1)
    if len(inverse) == len(unique) and (inverse == np.arange(len(unique))).all():
        return frames  # already in request order
    # index_select copies whole frames (memcpy); advanced indexing frames[inverse] took 9x
    # longer for an SVT sample (26 ms vs 2.8 ms), as much as a third of decoding it
    return frames.index_select(0, torch.from_numpy(inverse).to(frames.device))


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


def _read_torchcodec(path: str, unique: list[int], device: str = "cpu") -> torch.Tensor:
    from torchcodec.decoders import VideoDecoder

    try:
        decoder = VideoDecoder(path, dimension_order="NHWC", seek_mode=TORCHCODEC_SEEK_MODE,
                               num_ffmpeg_threads=1, device=device)
    except Exception as exc:  # torchcodec raises RuntimeError/ValueError with no file name
        raise VideoDecodeError(f"{path}: cannot open video ({exc})") from exc
    meta = decoder.metadata
    _check_range(path, unique, meta.num_frames)
    if not unique:
        return torch.empty((0, meta.height, meta.width, 3), dtype=torch.uint8, device=device)
    try:
        return decoder.get_frames_at(unique).data
    except Exception as exc:
        raise VideoDecodeError(f"{path}: cannot decode frames ({exc})") from exc


def _read_torchcodec_cuda(path: str, unique: list[int]) -> torch.Tensor:
    return _read_torchcodec(path, unique, device=f"cuda:{torch.cuda.current_device()}")


def check_gpu_decoder(backend: str, video: str | os.PathLike) -> None:
    """Decode one frame of ``video`` with GPU reader ``backend``; raise ``RuntimeError`` that
    names what is missing (CUDA device, torchcodec, its CUDA build or NVDEC) when it fails."""
    if backend not in GPU_BACKENDS:
        return
    if not torch.cuda.is_available():
        raise RuntimeError(f"decoder {backend!r} decodes on the GPU, but torch sees no CUDA device")
    try:
        import torchcodec
        from torchcodec.decoders import VideoDecoder
    except Exception as exc:
        raise RuntimeError(f"decoder {backend!r} needs torchcodec, which does not import: {exc}") from exc
    try:
        decoder = VideoDecoder(os.fspath(video), dimension_order="NHWC", device="cuda")
        decoder.get_frames_at([0])
    except Exception as exc:
        raise RuntimeError(
            f"decoder {backend!r}: torchcodec {getattr(torchcodec, '__version__', '?')} could not "
            f"decode {video} on {torch.cuda.get_device_name()} with NVDEC ({exc}). It needs a "
            "torchcodec wheel built with CUDA for this torch, FFmpeg with NVDEC (cuvid) and the "
            "driver's libnvcuvid; set pretrain.decoder_fallback to decode on the CPU instead"
        ) from exc


def loader_workers(backend: str, num_workers: int) -> int:
    """DataLoader workers for ``backend``: none for GPU readers (CUDA cannot start in forked
    workers; NVDEC decodes asynchronously, so the training process keeps up)."""
    return 0 if backend in GPU_BACKENDS else num_workers


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

    Packets are fed to the decoder by hand so that two kinds of work are skipped: H.264
    pictures that no other picture references (``nal_ref_idc == 0``: x264's non-pyramid
    B-frames, about 40% of the decode stage's frames) are not decoded unless they are
    wanted, and only wanted frames are converted to RGB. Dropping such a packet cannot
    change any other frame. Returns fewer frames than asked when the file ends early; the
    caller reports that.
    """
    from av.video.reformatter import VideoReformatter

    rate = stream.average_rate or stream.guessed_rate
    if not rate:
        raise VideoDecodeError(f"{container.name}: unknown frame rate")
    tb = stream.time_base
    start = stream.start_time or 0
    codec = stream.codec_context
    nal_bytes = _avc_length_size(codec)  # None: not length-prefixed H.264; decode every packet
    wanted = set(unique)
    to_rgb = VideoReformatter()  # one converter (SwsContext) for all frames of the call

    # Frame index <-> pts; exact for constant-fps files (Fractions, no float rounding).
    def to_index(pts: int) -> int:
        return round((pts - start) * tb * rate)

    def to_pts(index: int) -> int:
        return start + int(Fraction(index) / rate / tb)

    def decoded(packets):
        for packet in packets:
            if (nal_bytes and packet.size and packet.pts is not None
                    and to_index(packet.pts) not in wanted
                    and not _h264_is_reference(memoryview(packet), nal_bytes)):
                continue
            yield from codec.decode(packet)

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
            packets = container.demux(stream)
            first = next((p for p in packets if p.size), None)
            if first is None:
                if point <= 0:
                    return iter(())
            elif point <= 0 or first.pts is None or to_index(first.pts) <= target:
                return decoded(itertools.chain([first], packets))
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
        out.append(to_rgb.reformat(frame, format="rgb24").to_ndarray())
    return out


def _avc_length_size(codec) -> int | None:
    """NAL length-prefix size of H.264 in mp4/mkv (from the avcC record), else ``None``."""
    extra = codec.extradata
    if codec.name != "h264" or not extra or len(extra) < 7 or extra[0] != 1:
        return None  # Annex B or another codec: no cheap way to tell reference pictures
    return (extra[4] & 3) + 1


def _h264_is_reference(data: memoryview, nal_bytes: int) -> bool:
    """Whether a length-prefixed H.264 access unit holds a picture others may reference.

    Reads the first slice NAL's ``nal_ref_idc``; anything unexpected counts as a reference,
    so the packet is decoded.
    """
    i, n = 0, len(data)
    while i + nal_bytes < n:
        size = int.from_bytes(data[i:i + nal_bytes], "big")
        header = data[i + nal_bytes]
        if header & 0x1F in (1, 5):  # coded slice (non-IDR, IDR)
            return header & 0x60 != 0
        i += nal_bytes + size
    return True


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
    "torchcodec-cuda": _read_torchcodec_cuda,
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
        backend: str = "pyav",
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

    def generator(self, i: int, epoch: int | None = None) -> np.random.Generator:
        """The per-item generator; SeedSequence mixes the three numbers well."""
        epoch = self.epoch if epoch is None else epoch
        return np.random.default_rng(np.random.SeedSequence([self.seed, epoch, i]))

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        """Item ``key``, or ``(epoch, index)``: a sampler that names the epoch lets persistent
        workers, which keep the dataset object they started with, follow the epochs."""
        epoch, i = key if isinstance(key, tuple) else (self.epoch, key)
        epoch, i = operator.index(epoch), operator.index(i)  # samplers may hand numpy/torch ints
        if not 0 <= i < len(self.rows):
            raise IndexError(f"item {i} out of range (dataset has {len(self.rows)} videos)")
        row = self.rows[i]
        path = str(self.videos_root / row.path)
        clips_idx = [np.asarray(c, dtype=np.int64).reshape(-1) for c in
                     self.clip_sampler(row.frames, row.fps, self.generator(i, epoch))]
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
        return {"clips": clips, "label": row.label, "index": i, "epoch": epoch, "path": path,
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
