"""`snakemake --use-conda`: every rule that runs svt code names a conda env, and that env holds
every package the rule's code imports, at the version of requirements/lock.txt.

The environments themselves are not built here: conda-forge cannot be reached from this
workplace or its CI (PyPI, Debian and npm only), so `--use-conda` cannot run in the suite.
This reads the code instead: the import graph of each rule's entry point (svt.code_hash),
every third-party import in it, also those inside functions (mlflow, ffmpeg)."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from svt.code_hash import imported_modules, module_file

# import name -> the distribution that provides it
DISTRIBUTION = {"yaml": "pyyaml", "ffmpeg": "ffmpeg-python", "past": "future"}
# what a package needs at run time that its own metadata does not pull in
RUNTIME_EXTRAS = {"ffmpeg-python": {"future"}}
# imports on paths no rule takes: svt.config.load_config(validate=True), for benches and tests
NOT_IN_RULES = {"snakemake"}
LAUNCHED = {"svt.launch": "svt.pretrain"}  # starts `python -m svt.pretrain` under torchrun


def rules() -> dict[str, tuple[str | None, list[str]]]:
    """rule name -> (its conda env file or None, the svt entry points its shell runs)."""
    found = {}
    for smk in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        text = smk.read_text()
        for m in re.finditer(r"^(?:local)?rule (\w+):\n(.*?)(?=^(?:local)?rule |\Z)", text, re.S | re.M):
            entries = re.findall(r"python -m (svt\.\w+)", m.group(2))
            env = re.search(r'^\s+conda:\s*\n\s+"([^"]+)"', m.group(2), re.M)
            if entries:
                found[m.group(1)] = (env and str((smk.parent / env.group(1)).resolve()), entries)
    return found


def third_party_imports(entries: list[str]) -> set[str]:
    modules = set()
    for e in entries:
        modules |= {e, *imported_modules(e)}
        if e in LAUNCHED:
            modules |= set(imported_modules(LAUNCHED[e]))
    names = set()
    for mod in modules:
        for node in ast.walk(ast.parse(module_file(mod).read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n != "svt" and n not in sys.stdlib_module_names} - NOT_IN_RULES


def env_packages(path: str) -> dict[str, str | None]:
    """name -> pinned version (pip's ==, conda's =; None if unpinned), names in lower case."""
    out = {}
    for d in yaml.safe_load(Path(path).read_text())["dependencies"]:
        for spec in (d["pip"] if isinstance(d, dict) else [d]):
            name, _, version = spec.split("#")[0].strip().replace("==", "=").partition("=")
            out[name.strip().lower()] = version.strip() or None
    return out


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements" / "lock.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.strip().lower()] = version.strip()
    for extra in ("torch-cpu.txt",):
        for line in (REPO / "requirements" / extra).read_text().splitlines():
            if line.startswith("torch=="):
                pins["torch"] = line.split("==")[1].split("+")[0].strip()  # 2.13.0+cpu: the CPU build
    return pins


ALL_RULES = rules()


def test_the_rules_running_svt_code_are_all_found():
    assert {"index", "decode_shard", "decode_report", "manifest", "curate", "pretrain", "adapt",
            "features", "probe", "eval_table", "experiment", "sweep_table", "supervised"} <= set(ALL_RULES)


@pytest.mark.parametrize("rule", sorted(ALL_RULES))
def test_each_rule_env_holds_what_its_code_imports(rule):
    env, entries = ALL_RULES[rule]
    assert env is not None, f"rule {rule} runs {entries} but names no conda env"
    have = env_packages(env)
    needed = {DISTRIBUTION.get(n, n).lower() for n in third_party_imports(entries)}
    needed |= {x for d in needed for x in RUNTIME_EXTRAS.get(d, ())}
    assert needed <= set(have), f"rule {rule} ({Path(env).name}) lacks {sorted(needed - set(have))}"


@pytest.mark.parametrize("env", sorted((REPO / "envs").glob("*.yaml")), ids=lambda p: p.name)
def test_env_pins_are_the_locked_versions(env):
    pins, have = lock_pins(), env_packages(str(env))
    assert "conda-forge" in yaml.safe_load(env.read_text())["channels"]
    python = [v for k, v in have.items() if k == "python"]
    assert python == [f"{sys.version_info.major}.{sys.version_info.minor}"], python  # the venv's
    for name, version in have.items():
        if name in pins:
            assert version == pins[name], f"{env.name}: {name} {version}, locked {pins[name]}"
