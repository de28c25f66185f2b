"""Test videos for the input benchmarks, encoded exactly as the decode stage encodes.

A 16:9 moving test pattern with mild temporal noise and a hue drift, so P- and B-frames
carry real data (about 0.7 Mbit/s at 256p, the bitrate of web video at this size); the
encoder options come from ``svt.video.encoder_options``, so a change to the decode stage's
H.264 settings is what the benchmarks measure.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from svt.video import EncodeSettings, encoder_options


def make_video(path: Path, seconds: float, seed: int, short_side: int = 256,
               settings: EncodeSettings = EncodeSettings()) -> None:
    width = round(short_side * 16 / 9 / 2) * 2
    source = f"testsrc2=size={width}x{short_side}:rate={settings.fps:g}:duration={seconds}"
    options = [arg for key, value in encoder_options(settings).items()
               for arg in (f"-{key}", str(value))]
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i", source,
                    "-vf", f"noise=alls=10:allf=t+u:all_seed={seed},hue=H=t*{0.3 + 0.1 * seed}",
                    *options, "-r", f"{settings.fps:g}", "-an", str(path)], check=True)
