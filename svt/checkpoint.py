"""Training checkpoints: atomic writes, automatic resume, safe loading.

A checkpoint is written to a temporary file in the same folder, flushed to disk and renamed
over ``last.pth``: a job killed at any moment leaves either the previous or the new checkpoint,
never a torn one. Loading always uses ``weights_only=True`` (no arbitrary code from a file), so
everything saved is tensors, numbers, strings, lists and dicts.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from svt.atomic import atomic_write

LAST = "last.pth"


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """torch.save through svt.atomic: a kill leaves the previous file or the new one."""
    with atomic_write(path, "wb") as f:
        torch.save(obj, f)
    return Path(path)


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read: truncated, corrupt, or not a safe checkpoint."""


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """The checkpoint at ``path``; CheckpointError naming the file when it cannot be read
    (a missing file is FileNotFoundError, as usual)."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # torch raises RuntimeError, pickle errors, EOFError... by cause
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else 'no detail'})") from e


def latest(ckpt_dir: str | os.PathLike) -> Path | None:
    path = Path(ckpt_dir) / LAST
    return path if path.exists() else None


def load_resumable(path: str | os.PathLike, inputs: str,
                   map_location: str | torch.device = "cpu") -> tuple[Any, str | None, str]:
    """(state, None, "") for a checkpoint of these very ``inputs`` (a fingerprint of config
    and data, saved under "inputs"); otherwise (None, "stale" or "corrupt", the error) for a
    checkpoint of other inputs or one that cannot be read, which a run sets aside
    (:func:`set_aside`) and trains from the start."""
    try:
        state = load(path, map_location=map_location)
    except CheckpointError as e:  # atomic saves never leave one; a damaged disk can
        return None, "corrupt", str(e)
    return (state, None, "") if state.get("inputs") == inputs else (None, "stale", "")


def set_aside(path: str | os.PathLike, tag: str) -> Path:
    """Move a checkpoint out of the way, never deleting it: ``last.pth.<tag>-<unix time>``."""
    path = Path(path)
    aside = path.with_name(f"{path.name}.{tag}-{int(time.time())}")
    os.replace(path, aside)
    return aside


def seed_all(seed: int) -> None:
    """Seed every generator rng_state saves (Python, NumPy, torch on CPU and CUDA), as DINO's
    fix_random_seeds does: a run is repeatable, and its saved RNG states are comparable."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every random generator the training loop touches, in weights_only-loadable types."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": list(random.getstate()[1]), "python_version": random.getstate()[0],
        "python_gauss": random.getstate()[2],
        # int64, not uint32: uint32 tensors do not survive all_gather_object's pickling
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
