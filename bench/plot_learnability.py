"""Plot accuracy against steps from saved ``bench/demo_learnability.py`` outputs.

    python bench/plot_learnability.py OUT.txt [OUT.txt ...] --out curves.png [--title TEXT]

Each file is the standard output of one ``demo_learnability.py --curve-every N`` run (one
seed each, or several seeds in one file). The plot has two panels, slow-view linear probe and
slow-view kNN top-1 against training steps: one line per trained mode (``ssl``: SVT
pretraining, ``supervised``: the labelled bound), the mean over the runs with a band of
+- one standard deviation, and random init as a horizontal band. The figures printed beside
the plot are the same means and spreads, so the picture never says more than the numbers,
after the final rows of the runs (all six columns) as mean +- spread and the gain over random
init (the 3-seed figures of README "The demo result" come from here).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

CURVE = re.compile(r"^\s+(\w+) step (\d+): slow lin/kNN ([\d.]+) / ([\d.]+)")
# a final row: "<model> (seed N)?  slow lin / kNN  fast lin / kNN  slow-fast lin / kNN  (T s)"
ROW = re.compile(r"^(random init|supervised \d+ steps|ssl \d+ steps)(?: \(seed \d+\))?\s+"
                 + r"\s+".join([r"([\d.]+) /\s+([\d.]+)"] * 3))
COLUMNS = ["slow lin", "slow kNN", "fast lin", "fast kNN", "slow-fast lin", "slow-fast kNN"]
LABELS = {"ssl": "SVT pretraining (teacher)", "supervised": "trained with labels (the bound)"}


def read_runs(paths) -> tuple[dict, dict[str, np.ndarray]]:
    """{mode: {step: [(lin, knn) per run]}} of the curves, and {model: (runs, 6) array} of the
    final table rows (slow, fast, slow-fast; linear, kNN), random init among them."""
    curves: dict = defaultdict(lambda: defaultdict(list))
    rows: dict = defaultdict(list)
    for path in paths:
        for line in Path(path).read_text().splitlines():
            if m := CURVE.match(line):
                curves[m[1]][int(m[2])].append((float(m[3]), float(m[4])))
            elif m := ROW.match(line):
                rows[m[1]].append([float(x) for x in m.groups()[1:]])
    if not curves:
        raise SystemExit(f"no curve lines ('<mode> step N: slow lin/kNN a / b') in {', '.join(map(str, paths))}")
    return curves, {k: np.array(v) for k, v in rows.items()}


def print_final(rows: dict[str, np.ndarray]) -> None:
    """Mean +- standard deviation over the runs per model, and each trained model's gain over
    random init (mean of the per-run gains: runs pair by order, one seed per file)."""
    print(f"{'model':<32} {'runs':>4} " + " ".join(f"{c:>14}" for c in COLUMNS))
    for name, r in rows.items():
        print(f"{name:<32} {len(r):>4} " + " ".join(f"{m:>8.1f}+-{d:<4.1f}" for m, d in zip(r.mean(0), r.std(0))))
    base = rows.get("random init")
    for name, r in rows.items():
        if base is not None and name != "random init" and len(r) == len(base):
            gain = r - base
            print(f"{name + ' - random':<32} {len(r):>4} " + " ".join(
                f"{m:>+8.1f} [{lo:+.1f}]" for m, lo in zip(gain.mean(0), gain.min(0))))
    if base is not None:
        print("(gain: mean over runs, [smallest run's gain])")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("outputs", nargs="+", help="saved standard outputs of demo_learnability.py")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--title", default="")
    a = p.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves, rows = read_runs(a.outputs)
    if rows:
        print_final(rows)
    random = rows.get("random init")  # its slow linear and kNN columns are the panels' first two
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for col, (ax, metric) in enumerate(zip(axes, ("slow linear probe", "slow kNN"))):
        if random is not None:
            r = random[:, col]
            ax.axhspan(r.mean() - r.std(), r.mean() + r.std(), color="grey", alpha=0.25)
            ax.axhline(r.mean(), color="grey", label=f"random init ({r.mean():.1f})")
        for mode, by_step in sorted(curves.items()):
            steps = sorted(by_step)
            vals = [np.array(by_step[s])[:, col] for s in steps]
            mean, sd = np.array([v.mean() for v in vals]), np.array([v.std() for v in vals])
            n = min(len(v) for v in vals)
            line, = ax.plot(steps, mean, marker="o", label=f"{LABELS.get(mode, mode)} (n={n})")
            ax.fill_between(steps, mean - sd, mean + sd, color=line.get_color(), alpha=0.2)
            print(f"{metric:<18} {mode:<11} " + "  ".join(f"{s}: {m:.1f}+-{d:.1f}"
                                                            for s, m, d in zip(steps, mean, sd)))
        ax.set_title(metric)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("top-1 accuracy on the test videos (%)")
    axes[0].legend(loc="lower right", fontsize=8)
    if a.title:
        fig.suptitle(a.title)
    fig.tight_layout()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.out, dpi=110)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
