"""bench/plot_learnability.py: the 3-seed figures of README "The demo result" are read back
from saved bench/demo_learnability.py outputs; check the parsing, the means and the gains."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("plot_learnability", ROOT / "bench/plot_learnability.py")
plot = importlib.util.module_from_spec(spec)
spec.loader.exec_module(plot)

# the lines demo_learnability.py prints (one seed per file), with other lines between them
RUN = """5 classes, 480 train / 160 test videos (rendered in 44 s); chance 20.0%
model                      slow lin/kNN   fast lin/kNN  slow-fast lin/kNN
random init                {r:5.1f} /  40.0   43.1 /  45.6       46.3 /  40.0   (16 s)
  supervised step 170: slow lin/kNN 40.0 / 41.0 (loss 1.494, 47 s)
supervised 340 steps       60.0 /  61.0   45.6 /  50.0       68.8 /  70.6   (289 s)
  ssl step 170: slow lin/kNN {a:.1f} / 46.9 (loss 5.250, 352 s)
  ssl step 340: slow lin/kNN {b:.1f} / 61.3 (loss 6.361, 691 s)
ssl 340 steps              {b:5.1f} /  61.3   54.4 /  55.6       56.2 /  56.9   (1678 s)
"""


def test_reads_final_rows_curves_and_gains(tmp_path, capsys):
    files = []
    for i, (r, a, b) in enumerate([(40.0, 50.0, 60.0), (44.0, 52.0, 70.0)]):
        files.append(tmp_path / f"seed{i}.txt")
        files[-1].write_text(RUN.format(r=r, a=a, b=b))
    curves, rows = plot.read_runs(files)
    assert sorted(rows) == ["random init", "ssl 340 steps", "supervised 340 steps"]
    assert rows["ssl 340 steps"].shape == (2, 6)
    np.testing.assert_allclose(rows["ssl 340 steps"][:, 0], [60.0, 70.0])
    assert curves["ssl"][340] == [(60.0, 61.3), (70.0, 61.3)]
    np.testing.assert_array_equal(rows["random init"][:, :2], [(40.0, 40.0), (44.0, 40.0)])

    out = tmp_path / "curves.png"
    assert plot.main([*map(str, files), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = capsys.readouterr().out
    # slow linear: ssl 65.0 +- 5.0; gain over random init per seed +20 and +26: mean +23, smallest +20
    assert "65.0+-5.0" in text and "+23.0 [+20.0]" in text
    assert "ssl         170: 51.0+-1.0  340: 65.0+-5.0" in text


def test_no_curve_lines_is_an_error(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("nothing here\n")
    with pytest.raises(SystemExit, match="no curve lines"):
        plot.main([str(empty), "--out", str(tmp_path / "x.png")])
