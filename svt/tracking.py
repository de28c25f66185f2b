"""MLflow helpers that never take training down.

Every call goes through :class:`Tracker`, which retries with backoff when the tracking store is
unreachable and, after that, warns and carries on without tracking: losing a dashboard entry
is acceptable, losing a training run is not. The MLflow client is used directly (no global
"active run"), so a resumed job reattaches to its run by id.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping

log = logging.getLogger("svt.tracking")

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # offline clusters: no phoning home
# MLflow's own HTTP retries back off for minutes; ours (below) are short and then give up.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def flatten(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """{"optim": {"lr": 5e-4}} -> {"optim.lr": "0.0005"}; lists become their repr."""
    out: dict[str, str] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = str(value)
    return out


def default_uri(results_dir: str | os.PathLike) -> str:
    """The embedded store: one sqlite file under the results folder."""
    return f"sqlite:///{Path(results_dir).absolute() / 'mlflow.db'}"


def artifact_location(uri: str) -> str | None:
    """Artifacts of an embedded sqlite store live beside it (MLflow's default would be
    ./mlruns in whatever folder the job happens to run in)."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").absolute().as_uri()
    return None


def _rejected(err: Exception) -> bool:
    code = getattr(err, "error_code", "")
    return code in ("INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS",
                    "RESOURCE_DOES_NOT_EXIST", "BAD_REQUEST")


class Tracker:
    """One MLflow run. ``enabled=False`` (e.g. ranks other than 0) makes every call a no-op."""

    def __init__(self, uri: str | None, experiment: str, run_id: str | None = None,
                 run_name: str | None = None, tags: Mapping[str, str] | None = None,
                 enabled: bool = True, retries: int = 3, backoff_s: float = 1.0):
        self.enabled = bool(enabled and uri)
        self.retries, self.backoff_s = retries, backoff_s
        self.run_id: str | None = run_id
        self.client = None
        if not self.enabled:
            return
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        if run_id is None:
            exp_id = self._call(self._experiment_id, experiment)
            run = self._call(self.client.create_run, exp_id, run_name=run_name,
                             tags=dict(tags or {})) if exp_id else None
            self.run_id = run.info.run_id if run else None
        else:
            self._call(self.client.update_run, run_id, status="RUNNING")
        if self.run_id is None:
            self.enabled = False

    def _experiment_id(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location=artifact_location(self.uri))
        except Exception:  # created meanwhile by another process
            return self.client.get_experiment_by_name(name).experiment_id

    def _call(self, fn: Callable, *args, **kwargs):
        """Run one client call with retries; on final failure warn, disable tracking, go on."""
        if not self.enabled:
            return None
        for attempt in range(self.retries + 1):
            try:
                return fn(*args, **kwargs)
            except Exception as err:  # network, locked sqlite, server restart ...
                if _rejected(err):  # the store answered "no": retrying will not help
                    log.warning("MLflow refused %s: %s", getattr(fn, "__name__", fn), err)
                    return None
                if attempt == self.retries:
                    log.warning("MLflow unavailable (%s: %s); continuing without tracking",
                                type(err).__name__, err)
                    self.enabled = False
                    return None
                time.sleep(self.backoff_s * 2**attempt)

    def log_params(self, params: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow's per-request limit
            self._call(self.client.log_batch, self.run_id, params=items[i:i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        if not self.enabled:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        self._call(self.client.log_batch, self.run_id, metrics=items)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        if not self.enabled:
            return
        for k, v in tags.items():
            self._call(self.client.set_tag, self.run_id, k, str(v))

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        if not self.enabled:
            return
        self._call(self.client.log_artifact, self.run_id, str(path), artifact_path)

    def finish(self, status: str = "FINISHED") -> None:
        if not self.enabled:
            return
        self._call(self.client.set_terminated, self.run_id, status)
