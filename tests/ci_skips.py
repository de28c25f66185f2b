"""Pytest plugin: under CI (``CI`` set, as ``.ci/run`` does) a skipped test is a failure.

A test skips when a part it needs is missing (ffmpeg, SLURM, Chromium, a Python package, a
decoder backend). On a developer's machine that is fine: the skip reason names the command that
installs the part (``conftest.needs``). CI installs everything, so a skip there means a test
silently did not run; this plugin reports it as failed instead.

The only skips CI allows depend on the machine's GPU, and only on the right machine:

* ``@pytest.mark.gpu`` (``gpu(n)``: n devices): the test needs a CUDA device (n of them); it
  may skip on a machine with fewer GPUs.
* ``@pytest.mark.cpu_only``: the test checks what happens without a GPU; it may skip on a
  machine that has one.

tests/conftest.py imports the hooks; tests/test_ci_skips.py runs them on inner test files.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess

import pytest

MARKERS = {
    "gpu(n=1)": "needs n CUDA devices; under CI its skip is allowed only on a machine with fewer",
    "cpu_only": "checks the behaviour of a machine without a GPU; under CI its skip is allowed "
                "only on a machine with one",
}


def in_ci() -> bool:
    """True when the CI variable is set to anything but an empty / false-like value."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@functools.cache
def machine_gpus() -> int:
    """The CUDA devices torch can use, else those nvidia-smi lists (scripts/setup.sh then
    installs the CUDA build of torch, so the two only differ on a broken setup)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.device_count()
    smi = shutil.which("nvidia-smi")
    res = subprocess.run([smi, "-L"], capture_output=True, text=True) if smi else None
    return res.stdout.count("GPU ") if res is not None and res.returncode == 0 else 0


def machine_has_gpu() -> bool:
    return machine_gpus() > 0


def skip_allowed(item: pytest.Item) -> bool:
    gpu = item.get_closest_marker("gpu")
    if gpu is not None and machine_gpus() < (gpu.args[0] if gpu.args else 1):
        return True
    return item.get_closest_marker("cpu_only") is not None and machine_has_gpu()


def _reason(longrepr) -> str:
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # (path, lineno, "Skipped: why")
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _fail(report, what: str) -> None:
    report.outcome = "failed"
    report.ci_skip = True
    report.longrepr = (f"CI is set: {what} was skipped ({_reason(report.longrepr)}); under CI "
                       "every test must run (only tests marked gpu, on a machine with fewer GPUs "
                       "than they need, or cpu_only, on a machine with one, may skip)")


def pytest_configure(config: pytest.Config) -> None:
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    report = yield
    if (report.skipped and in_ci() and not hasattr(report, "wasxfail")
            and not skip_allowed(item)):
        _fail(report, item.nodeid)
    return report


@pytest.hookimpl(tryfirst=True)
def pytest_report_teststatus(report, config):
    """A skip turned failure in the setup phase (where skipif marks are evaluated) counts as
    FAILED, as one in the test body does, not as an error of the test's setup."""
    if getattr(report, "ci_skip", False) and report.when == "setup":
        return "failed", "F", ("FAILED", {"red": True})
    return None


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    """A whole module skipped while it is collected (importorskip or skip at module level)."""
    report = yield
    if report.skipped and in_ci():
        _fail(report, collector.nodeid or "collection")
    return report
