"""Probe and re-encode one video with ffmpeg.

Every ffmpeg/ffprobe call is an argument list (never a shell string) and every path is passed
as ``file:<absolute path>`` so names with spaces, quotes, ``$``, backticks, a leading ``-`` or a
``proto:`` prefix reach ffmpeg as plain file names.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import ffmpeg  # ffmpeg-python: builds the filter graph and escapes its arguments

from svt.atomic import atomic_path


class VideoError(RuntimeError):
    """The video cannot be used. ``reason`` is a short, user-facing explanation."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}")


@dataclass(frozen=True)
class VideoInfo:
    width: int  # displayed size: rotation and sample aspect ratio applied
    height: int
    rotation: int  # display rotation in degrees as ffprobe reports it, in {0, 90, 180, 270}
    fps: float
    frames: int  # packets of the first video stream (one per frame for the codecs we meet)
    duration: float  # seconds; frames / fps when the container does not say
    codec: str


@dataclass(frozen=True)
class EncodeSettings:
    short_side: int = 256
    fps: float = 30.0
    gop: int = 16  # keyframe interval in frames: random access never decodes more than this
    crf: int = 23
    preset: str = "veryfast"
    fast_decode: bool = True  # H.264 the training loader decodes ~1.5x faster (FAST_DECODE_X264)
    min_frames: int = 16  # fewer output frames than this and the video is rejected
    min_decoded_fraction: float = 0.9  # less of the announced duration decoded: truncated
    timeout_s: float = 600.0


# x264 options for videos that are read far more often than written. CAVLC instead of CABAC
# entropy coding, and B-frames that no other frame references (no B-pyramid), which the
# loader skips unless a view wants them (svt.loader). On 456x256 gop-16 clips, one SVT sample
# (74 distinct frames) read with PyAV: 128 ms with x264's defaults, 91 ms without the
# pyramid, 71-78 ms with both; files grow ~9% (bench/pretrain_e2e.py, README "Input pipeline").
FAST_DECODE_X264 = "cabac=0:b-pyramid=none"


def encoder_options(settings: EncodeSettings) -> dict:
    """ffmpeg output options of the decode stage's H.264 (also used by the benchmarks)."""
    opts = {"vcodec": "libx264", "preset": settings.preset, "crf": settings.crf,
            "g": settings.gop, "keyint_min": settings.gop, "sc_threshold": 0, "pix_fmt": "yuv420p"}
    if settings.fast_decode:
        opts["x264-params"] = FAST_DECODE_X264
    return opts


def _arg(path: str | os.PathLike) -> str:
    return "file:" + str(Path(path).absolute())


def _last_line(stderr: bytes | str) -> str:
    text = stderr.decode("utf-8", "replace") if isinstance(stderr, bytes) else stderr
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "no message"


def _rate(text: str | None) -> float:
    try:
        value = Fraction(text or "0/0")
    except (ValueError, ZeroDivisionError):
        return 0.0
    return float(value) if value > 0 else 0.0


def _rotation(stream: dict) -> int:
    # ffmpeg >= 5 reports the display matrix as side data; older files carry a "rotate" tag.
    # Only whether it is a quarter turn matters here (width and height swap): ffmpeg itself
    # applies the rotation when it re-encodes.
    for side in stream.get("side_data_list", []) or []:
        if "rotation" in side:
            return int(round(float(side["rotation"]))) % 360
    tag = (stream.get("tags") or {}).get("rotate")
    return int(tag) % 360 if tag not in (None, "") else 0


def probe(path: str | os.PathLike, timeout_s: float = 120.0) -> VideoInfo:
    """Describe the first video stream of ``path``; raise VideoError when it has none."""
    p = Path(path)
    if not p.exists():
        raise VideoError(path, "file not found")
    if p.stat().st_size == 0:
        raise VideoError(path, "empty file (0 bytes)")
    cmd = ["ffprobe", "-v", "error", "-count_packets", "-show_streams", "-show_format",
           "-of", "json", _arg(p)]
    try:
        res = subprocess.run(cmd, capture_output=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise VideoError(path, f"unreadable: ffprobe did not finish in {timeout_s:.0f} s") from None
    if res.returncode != 0:
        raise VideoError(path, f"unreadable: {_last_line(res.stderr)}")
    meta = json.loads(res.stdout or b"{}")
    streams = meta.get("streams", [])
    video = [s for s in streams if s.get("codec_type") == "video"
             and not (s.get("disposition") or {}).get("attached_pic")]
    if not video:
        kinds = sorted({s.get("codec_type", "?") for s in streams})
        if "audio" in kinds:
            raise VideoError(path, "no video stream (audio only)")
        raise VideoError(path, f"no video stream (streams: {', '.join(kinds) or 'none'})")
    v = video[0]
    fps = _rate(v.get("avg_frame_rate")) or _rate(v.get("r_frame_rate"))
    frames = int(v.get("nb_read_packets") or v.get("nb_frames") or 0)
    duration = float(v.get("duration") or meta.get("format", {}).get("duration") or 0.0)
    if not duration and fps:
        duration = frames / fps
    if not fps and duration:
        fps = frames / duration
    width, height = int(v.get("width") or 0), int(v.get("height") or 0)
    if width <= 0 or height <= 0:
        raise VideoError(path, "unreadable: video stream has no frame size")
    sar = _rate(v.get("sample_aspect_ratio")) or 1.0
    width = int(round(width * sar))  # anamorphic video: displayed width differs from stored
    rotation = _rotation(v)
    if rotation in (90, 270):
        width, height = height, width
    return VideoInfo(width, height, rotation, fps, frames, duration, v.get("codec_name", "?"))


def target_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """Output (width, height): the short side becomes ``short_side``, aspect kept, both even
    (H.264 with 4:2:0 chroma needs even dimensions)."""
    scale = short_side / min(width, height)
    w, h = width * scale, height * scale

    def even(x: float) -> int:
        return max(2, 2 * int(round(x / 2)))

    return even(w), even(h)


def transcode(src: str | os.PathLike, dst: str | os.PathLike, settings: EncodeSettings,
              info: VideoInfo | None = None) -> VideoInfo:
    """Re-encode ``src`` to an H.264 mp4 at ``dst`` (written atomically) and return the
    output's probe. Raises VideoError with the reason when the video must be rejected."""
    info = info or probe(src, settings.timeout_s)
    expected = info.duration * settings.fps
    if info.duration and expected < settings.min_frames:
        raise VideoError(src, f"too short: {info.duration:.2f} s gives {expected:.0f} frames at "
                              f"{settings.fps:g} fps, fewer than min_frames={settings.min_frames}")
    width, height = target_size(info.width, info.height, settings.short_side)
    with atomic_path(dst) as tmp:  # a rejected or killed encode leaves no file at dst
        return _encode(src, tmp, info, settings, width, height)


def _encode(src, tmp: Path, info: VideoInfo, settings: EncodeSettings, width: int,
            height: int) -> VideoInfo:
    """ffmpeg to ``tmp``, then the output's probe; VideoError when it must be rejected."""
    # ffmpeg applies the rotation itself (autorotate) before our filters, so width/height
    # above are already the displayed ones and the output carries no rotation flag.
    stream = (ffmpeg.input(_arg(src)).video
              .filter("fps", fps=settings.fps, round="near")
              .filter("scale", width, height, flags="bicubic")
              .filter("setsar", "1"))
    out = ffmpeg.output(
        stream, _arg(tmp), f="mp4", **encoder_options(settings), movflags="+faststart",
        an=None, sn=None, dn=None, map_metadata=-1, threads=1,
    ).global_args("-nostdin", "-hide_banner", "-loglevel", "error", "-threads", "1")
    cmd = out.overwrite_output().compile()
    timeout = max(settings.timeout_s, 20 * info.duration)
    try:
        res = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise VideoError(src, f"ffmpeg did not finish in {timeout:.0f} s") from None
    if res.returncode != 0 or not tmp.exists() or tmp.stat().st_size == 0:
        raise VideoError(src, f"decode failed: {_last_line(res.stderr)}")
    try:
        out_info = probe(tmp, settings.timeout_s)
    except VideoError as err:
        raise VideoError(src, f"decode produced no usable video: {err.reason}") from None
    problem = check_output(out_info, info, settings)
    if problem:
        raise VideoError(src, problem)
    return out_info


def check_output(out: VideoInfo, source: VideoInfo | None, settings: EncodeSettings) -> str | None:
    """Why a re-encoded video is unusable, or None."""
    if out.frames < settings.min_frames:
        return f"too short: {out.frames} frames, fewer than min_frames={settings.min_frames}"
    if source is not None and source.duration > 0:
        decoded = out.frames / settings.fps
        if decoded < settings.min_decoded_fraction * source.duration - 1.0 / settings.fps:
            return (f"truncated: decoded {decoded:.2f} s of the {source.duration:.2f} s "
                    f"the container announces")
    return None


def output_name(source: str) -> str:
    """Processed-video path for a raw video path (relative, POSIX): same folders, ``.mp4``.

    The original extension is kept in the stem when it is not .mp4, so ``a.avi`` and
    ``a.mp4`` never collide."""
    p = Path(source)
    if p.suffix.lower() == ".mp4":
        return p.as_posix()
    return p.with_name(p.name + ".mp4").as_posix() if p.suffix else p.as_posix() + ".mp4"
