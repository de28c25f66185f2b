"""Partial reruns: an edit to one stage's code plans that stage and what follows it, and
nothing else (README, "Partial reruns").

A copy of this checkout takes over a copy of the session's tiny run (conftest), which it finds
up to date; then, one at a time, a function used only by one stage is edited in the copied
checkout and `snakemake -n` must plan exactly the expected rules.
Also unit tests of svt.code_hash, which turns each rule's entry module into its code hash."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from svt.code_hash import code_hash, imported_modules

AFTER_CURATE = {"curate", "pretrain", "adapt", "features", "probe", "eval_table"}
# (file, function edited, rules the dry run must plan); `all` and `experiment` aside
EDITS = {
    "table formatting": ("svt/table.py", "format_table", {"eval_table"}),
    "probe": ("svt/probe.py", "train_linear", {"probe", "eval_table"}),
    "decode report": ("svt/data_report.py", "report", {"decode_report"}),
    "curate": ("svt/curate.py", "temporal_stats", AFTER_CURATE),
    # the random baseline is the same model: its evaluation reruns too
    "model": ("svt/model.py", "build_model", AFTER_CURATE - {"curate"}),
}


def copy_checkout(dst: Path) -> Path:
    """The files git knows of (tracked, or untracked and not ignored), as a fresh clone has."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=REPO, capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    return dst


def snakemake(repo: Path, work: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}  # the CPU, also on a GPU host
    res = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(repo / "Snakefile"),
                          "--cores", "2", *args], cwd=work, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


def planned_rules(res: subprocess.CompletedProcess) -> set[str]:
    """Rule names of the jobs a dry run lists ("rule probe:" / "localrule eval_table:")."""
    rules = set()
    for line in (res.stdout + res.stderr).splitlines():
        words = line.split()
        if len(words) == 2 and words[0] in ("rule", "localrule") and words[1].endswith(":"):
            rules.add(words[1][:-1])
    return rules - {"all", "experiment"}  # the experiment's record follows every change


def edit_function(path: Path, name: str) -> str:
    """Insert a harmless statement at the top of top-level function ``name``; return the
    original text so the caller can restore it."""
    text = path.read_text()
    (fn,) = [n for n in ast.parse(text).body if isinstance(n, ast.FunctionDef) and n.name == name]
    first = fn.body[1] if isinstance(fn.body[0], ast.Expr) and isinstance(
        getattr(fn.body[0], "value", None), ast.Constant) and len(fn.body) > 1 else fn.body[0]
    lines = text.splitlines(keepends=True)
    indent = lines[first.lineno - 1][:first.col_offset]
    lines.insert(first.lineno - 1, f"{indent}_edited = True  # test_reruns\n")
    path.write_text("".join(lines))
    return text


@pytest.fixture(scope="module")
def finished_run(tiny_run, tmp_path_factory):
    """A copied checkout, and a copy of the session's finished tiny run (conftest) that the
    copied checkout finds up to date: its code is the same."""
    base = tmp_path_factory.mktemp("reruns")
    repo = copy_checkout(base / "repo")
    work = tiny_run.copy(base / "work").wd
    (work / "config.yaml").unlink()
    (work / "config.yaml").symlink_to(repo / "config.yaml")
    cfg = work / "tiny.yaml"
    assert planned_rules(snakemake(repo, work, "--configfile", str(cfg), "-n")) == set()
    return repo, work, cfg


@pytest.mark.slow
@pytest.mark.parametrize("what", list(EDITS))
def test_an_edit_plans_its_stage_and_what_follows_only(finished_run, what):
    repo, work, cfg = finished_run
    rel, function, expected = EDITS[what]
    original = edit_function(repo / rel, function)
    try:
        planned = planned_rules(snakemake(repo, work, "--configfile", str(cfg), "-n"))
    finally:
        (repo / rel).write_text(original)
    assert planned == expected, (what, sorted(planned))


# ---------------------------------------------------------------------- svt.code_hash


def test_entry_modules_cover_what_they_import_and_no_more():
    pretrain = imported_modules("svt.pretrain")
    assert {"svt.model", "svt.loss", "svt.views", "svt.knn", "svt.eval_views"} <= set(pretrain)
    assert "svt.launch" not in pretrain  # it only starts the step
    assert not {"svt.probe", "svt.table", "svt.features", "svt.adapt"} & set(pretrain)
    assert "svt.table" not in imported_modules("svt.probe")
    assert not {"svt.data_report", "svt.tracking"} & set(imported_modules("svt.decode"))
    assert "svt.data_report" not in imported_modules("svt.data_manifest")
    index = imported_modules("svt.index")  # modules imported by name: `from svt.datasets import ucf101`
    assert {"svt.datasets", "svt.datasets.ucf101", "svt.datasets.kinetics"} <= set(index)


def test_code_hash_follows_the_import_graph(tmp_path):
    pkg = tmp_path / "svt"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from svt.b import f\n\ndef g():\n    import svt.sub.c\n")
    (pkg / "b.py").write_text("import os\nfrom svt.sub import c\n\ndef f():\n    pass\n")
    (pkg / "sub" / "c.py").write_text("X = 1\n")
    (pkg / "d.py").write_text("Y = 2\n")
    (pkg / "launch.py").write_text("")
    assert imported_modules("svt.a", pkg) == ["svt", "svt.a", "svt.b", "svt.sub", "svt.sub.c"]
    before = {m: code_hash(m, pkg) for m in ("svt.a", "svt.b", "svt.d")}
    code_hash.cache_clear()
    (pkg / "sub" / "c.py").write_text("X = 2\n")  # imported inside a function, two levels down
    after = {m: code_hash(m, pkg) for m in ("svt.a", "svt.b", "svt.d")}
    assert after["svt.a"] != before["svt.a"] and after["svt.b"] != before["svt.b"]
    assert after["svt.d"] == before["svt.d"]
    (pkg / "a.py").write_text("import svt.missing\n")
    code_hash.cache_clear()
    with pytest.raises(ValueError, match="svt.missing"):
        code_hash("svt.a", pkg)
