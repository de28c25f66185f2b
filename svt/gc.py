"""Disk hygiene: stage outputs that no experiment uses (``python -m svt.gc``, ``make gc``).

Stage outputs are shared between experiments and named by hashes
(``<results_dir>/data/<dataset>-<hash>/``, ``curate/<hash>/``, ``pretrain/<dataset>-<hash>/``,
``evaluate/<kind>-<hash>/``, ``evaluate/table-<hash>/``), so changing a setting leaves the old
folders behind. Each experiment records the outputs it used in
``<results_dir>/experiments/<name>/latest.json`` (a sweep's variants in
``variants/<variant>/latest.json`` below it). This lists every stage folder that no
experiment record refers to, with its size, and removes them only with ``--delete``. It
refuses to delete while a Snakemake invocation holds locks in this working directory (a
running job's folder is not in any record yet), and it marks pretraining folders with
checkpoints, which may be a killed run waiting to resume.

Log folders (``<logs_dir>/``) are small and left alone.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from svt.results import LATEST

STAGES = ("data", "curate", "pretrain", "evaluate")


@dataclass(frozen=True)
class Orphan:
    path: Path
    bytes: int
    note: str


def referenced(results_dir: Path, root: Path) -> set[Path]:
    """Every output path the experiment records under ``results_dir`` name (resolved; the
    records hold paths relative to the working directory the workflow ran in, ``root``)."""
    paths = set()
    for record in sorted((results_dir / "experiments").rglob(LATEST)):  # sweep variants too
        try:
            outputs = json.loads(record.read_text())["outputs"]
        except (OSError, ValueError, KeyError) as exc:
            raise SystemExit(f"svt.gc: cannot read {record} ({exc}); fix or remove it first") from None
        for group in outputs.values():
            for p in [group] if isinstance(group, str) else group:
                paths.add((root / p).resolve())
    return paths


def orphans(results_dir: Path, root: Path) -> list[Orphan]:
    """Stage folders no experiment refers to: neither one of its paths, inside one, nor
    holding one."""
    used = referenced(results_dir, root)
    found = []
    for stage in STAGES:
        for folder in sorted(p for p in (results_dir / stage).glob("*") if p.is_dir()):
            f = folder.resolve()
            if any(u == f or f in u.parents or u in f.parents for u in used):
                continue
            note = ""
            if stage == "pretrain" and (folder / "checkpoints").is_dir() and \
                    not (folder / "teacher_backbone.pth").exists():
                note = "unfinished pretraining with checkpoints (a killed run can resume from them)"
            found.append(Orphan(folder, _size(folder), note))
    return found


def locked(root: Path) -> list[Path]:
    """Snakemake's lock files in ``root``: an invocation is running (or was killed hard;
    ``snakemake --unlock`` clears those)."""
    return sorted((root / ".snakemake" / "locks").glob("*"))


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m svt.gc", description=__doc__.split("\n\n")[0])
    ap.add_argument("--results-dir", type=Path, default=Path("results"))
    ap.add_argument("--root", type=Path, default=Path("."),
                    help="working directory the workflow runs in (the records' paths are relative to it)")
    ap.add_argument("--delete", action="store_true", help="remove the listed folders (default: list only)")
    a = ap.parse_args(argv)
    if not (a.results_dir / "experiments").is_dir():
        print(f"svt.gc: no experiment records under {a.results_dir}/experiments/; nothing is "
              "known to be in use, so nothing is listed", file=sys.stderr)
        return 1
    found = orphans(a.results_dir, a.root)
    if not found:
        print(f"svt.gc: every stage folder under {a.results_dir}/ is used by an experiment")
        return 0
    total = sum(o.bytes for o in found)
    print(f"Stage outputs no experiment under {a.results_dir}/experiments/ uses:")
    for o in found:
        print(f"  {human(o.bytes):>9}  {o.path}" + (f"  ({o.note})" if o.note else ""))
    print(f"  {human(total):>9}  in {len(found)} folders")
    if not a.delete:
        print("Nothing removed (a dry run); `make gc CONFIRM=yes` (python -m svt.gc --delete) "
              "removes them.")
        return 0
    locks = locked(a.root)
    if locks:
        print(f"svt.gc: not removing anything: a Snakemake invocation holds locks in "
              f"{a.root / '.snakemake' / 'locks'} ({len(locks)} files); wait for it, or run "
              "`snakemake --unlock` if none is running", file=sys.stderr)
        return 1
    for o in found:
        shutil.rmtree(o.path)
        print(f"removed {o.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
