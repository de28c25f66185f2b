"""svt.tracking: MLflow logging that never takes a training run down."""

from __future__ import annotations

import socket

from mlflow.tracking import MlflowClient

from svt.tracking import Tracker, artifact_location, flatten


def test_flatten_nested_config():
    assert flatten({"optim": {"lr": 5e-4, "betas": [0.9, 0.99]}, "seed": 0}) == {
        "optim.lr": "0.0005", "optim.betas": "[0.9, 0.99]", "seed": "0"}


def test_logs_to_embedded_store_and_resumes_the_same_run(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    t = Tracker(uri, "exp", run_name="pretrain", tags={"svt.stage": "pretrain"})
    t.log_params({"a": 1, "b": "x"})
    t.log_metrics({"loss": 2.0}, step=1)
    (tmp_path / "f.txt").write_text("hello")
    t.log_artifact(tmp_path / "f.txt")
    again = Tracker(uri, "exp", run_id=t.run_id)  # a restarted job reattaches by id
    again.log_params({"a": 1})  # same value again: accepted
    again.log_params({"a": 2})  # changed value: refused by MLflow, warned, tracking stays on
    assert again.enabled
    again.log_metrics({"loss": 1.0}, step=2)
    again.finish()
    client = MlflowClient(uri)
    run = client.get_run(t.run_id)
    assert run.info.status == "FINISHED" and run.data.params == {"a": "1", "b": "x"}
    assert [m.value for m in client.get_metric_history(t.run_id, "loss")] == [2.0, 1.0]
    assert [a.path for a in client.list_artifacts(t.run_id)] == ["f.txt"]
    # artifacts beside the store, not in ./mlruns of whatever folder the job ran in
    assert (tmp_path / "mlartifacts").is_dir()
    assert artifact_location(uri) == (tmp_path / "mlartifacts").as_uri()


def test_disabled_tracker_is_a_no_op():
    t = Tracker(None, "exp")
    assert not t.enabled and t.run_id is None
    t.log_params({"a": 1})
    t.log_metrics({"loss": 1.0}, 1)
    t.set_tags({"x": "y"})
    t.finish()


def test_unreachable_server_warns_and_carries_on(caplog):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t = Tracker(f"http://127.0.0.1:{port}", "exp", retries=1, backoff_s=0.01)
    assert not t.enabled
    t.log_metrics({"loss": 1.0}, 1)  # silently skipped
    assert "MLflow unavailable" in caplog.text
