"""tests/ci_skips.py: under CI a skipped test fails, unless it is marked gpu (on a machine
with fewer GPUs than it needs) or cpu_only (on a machine with one); outside CI a skip stays a skip and the
summary prints its reason (the install command, from conftest.needs)."""

from __future__ import annotations

import re

import pytest

import ci_skips
from ci_skips import machine_has_gpu

pytest_plugins = ["pytester"]

INNER = """
import pytest

@pytest.mark.skipif(True, reason="frobnicator is missing; install it with: make frob")
def test_marked_skip():
    pass

def test_imperative_skip():
    pytest.skip("widget is missing; install it with: make widget")

@pytest.mark.gpu
@pytest.mark.skipif(True, reason="needs a GPU")
def test_gpu_only():
    pass

@pytest.mark.gpu(64)
def test_needs_64_gpus():
    pytest.skip("needs 64 CUDA devices")

@pytest.mark.cpu_only
def test_cpu_only():
    pytest.skip("this machine has a GPU")

@pytest.mark.xfail(reason="known bug", strict=True)
def test_expected_failure():
    assert False

def test_runs():
    pass
"""


def run_inner(pytester: pytest.Pytester) -> pytest.RunResult:
    pytester.makepyfile(test_inner=INNER)
    return pytester.runpytest("-v", "-ra", "-p", "no:cacheprovider", plugins=[ci_skips])


def outcomes(result: pytest.RunResult) -> dict[str, str]:
    """test name -> the word the terminal shows for it (-v lines: PASSED, FAILED, SKIPPED...)."""
    lines = [re.match(r"test_inner\.py::(\w+) ([A-Z]+)", line) for line in result.outlines]
    return {m[1]: m[2] for m in lines if m}


@pytest.mark.parametrize("value", ["true", "1", "yes"])
def test_under_ci_a_skip_fails_but_the_gpu_dependent_one(pytester, monkeypatch, value):
    monkeypatch.setenv("CI", value)
    result = run_inner(pytester)
    gpu = machine_has_gpu()
    assert outcomes(result) == {
        "test_marked_skip": "FAILED",  # skipif: in the setup phase, still FAILED (not ERROR)
        "test_imperative_skip": "FAILED",
        "test_gpu_only": "FAILED" if gpu else "SKIPPED",
        "test_needs_64_gpus": "SKIPPED",  # no machine here has that many
        "test_cpu_only": "SKIPPED" if gpu else "FAILED",
        "test_expected_failure": "XFAIL",  # an xfail is not a skip
        "test_runs": "PASSED",
    }
    result.assert_outcomes(passed=1, failed=3, skipped=2, xfailed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    out = result.stdout.str()
    # the failure says why: the skip reason with its install command, and the CI rule
    assert "frobnicator is missing; install it with: make frob" in out
    assert "widget is missing; install it with: make widget" in out
    assert out.count("under CI every test must run") >= 3


@pytest.mark.parametrize("value", [None, "", "false", "0"])
def test_outside_ci_skips_stay_skips_and_print_the_install_command(pytester, monkeypatch, value):
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    result = run_inner(pytester)
    assert outcomes(result) == {
        "test_marked_skip": "SKIPPED", "test_imperative_skip": "SKIPPED",
        "test_gpu_only": "SKIPPED", "test_needs_64_gpus": "SKIPPED", "test_cpu_only": "SKIPPED",
        "test_expected_failure": "XFAIL", "test_runs": "PASSED",
    }
    result.assert_outcomes(passed=1, skipped=5, xfailed=1)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines([
        "SKIPPED *frobnicator is missing; install it with: make frob",
        "SKIPPED *widget is missing; install it with: make widget",
    ])


def test_under_ci_a_module_skipped_at_import_fails(pytester, monkeypatch):
    pytester.makepyfile(test_mod="""
        import pytest
        pytest.importorskip("no_such_module_svt", reason="no_such_module_svt is missing; install it with: make x")

        def test_never():
            pass
    """)
    monkeypatch.setenv("CI", "true")
    result = pytester.runpytest("-p", "no:cacheprovider", plugins=[ci_skips])
    assert result.ret != pytest.ExitCode.OK
    result.assert_outcomes(errors=1)
    assert "install it with: make x" in result.stdout.str()
    monkeypatch.delenv("CI")
    result = pytester.runpytest("-p", "no:cacheprovider", plugins=[ci_skips])
    result.assert_outcomes(skipped=1)


def test_the_suite_loads_the_plugin(request):
    """tests/conftest.py registers the hooks and the markers for the real suite."""
    hooks = request.config.pluginmanager.hook
    for name in ("pytest_runtest_makereport", "pytest_make_collect_report"):
        impls = [h.function for h in getattr(hooks, name).get_hookimpls()]
        assert getattr(ci_skips, name) in impls, name
    names = {line.split(":")[0] for line in request.config.getini("markers")}
    assert {"gpu(n=1)", "cpu_only", "slow"} <= names
