"""svt.tracking: MLflow logging that never takes a training run down."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import REPO
from svt.tracking import (COMMIT_ENV, CONFIG_HASH_ENV, PARENT_ENV, Tracker, artifact_location,
                          config_hash, end_workflow_run, flatten, git_commit, safe_name, safe_names,
                          start_workflow_run)


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


def test_run_shorter_than_the_sampling_interval_still_has_system_metrics(tmp_path):
    """MLflow's monitor would drop a partial interval; a 1-s run with a 60-s interval keeps
    one sample, published at finish."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "sysmetrics")
    tracker.start_system_metrics(60)
    tracker.log_metrics({"loss": 1.0}, step=1)
    tracker.finish()
    run = MlflowClient(uri).get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    assert "system/cpu_utilization_percentage" in run.data.metrics


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


def _isolated_env(monkeypatch):
    """start_workflow_run exports the parent id etc.; monkeypatch puts the old values back."""
    for key in (PARENT_ENV, COMMIT_ENV, CONFIG_HASH_ENV):
        monkeypatch.setenv(key, "")


WRITER = """
import sys
from svt.tracking import Tracker
uri, steps, i = sys.argv[1], int(sys.argv[2]), sys.argv[3]
t = Tracker(uri, "concurrent", run_name=f"writer-{i}", tags={"svt.rule": "writer"})
assert t.enabled, "tracking was disabled"
t.log_params({"writer": i, "steps": steps})
for step in range(steps):
    t.log_metrics({"loss": 100.0 * int(i) + step, "acc": step / steps}, step)
t.log_artifact(sys.argv[4], "notes")
t.finish()
print(t.run_id)
"""


def test_concurrent_processes_log_to_one_embedded_store(tmp_path, monkeypatch):
    """Six real processes log into one fresh sqlite store at once (created once first, as the
    workflow's onstart does): none crashes, none is disabled, no metric is lost."""
    _isolated_env(monkeypatch)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = start_workflow_run(uri, "concurrent", {"optim": {"lr": 0.1}, "experiment": "x"})
    assert parent and os.environ[PARENT_ENV] == parent
    note = tmp_path / "note.txt"
    note.write_text("hello")
    n, steps = 6, 40
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, uri, str(steps), str(i), str(note)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(n)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
        assert "MLflow unavailable" not in err and "MLflow refused" not in err, err[-2000:]
    end_workflow_run(uri, "FINISHED")
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("concurrent")
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    assert sorted(r.info.run_id for r in children) == sorted(out.strip() for out, _ in outs)
    for r in children:
        i = int(r.data.params["writer"])
        assert r.info.status == "FINISHED"
        assert r.data.tags["svt.config_hash"] == client.get_run(parent).data.tags["svt.config_hash"]
        loss = client.get_metric_history(r.info.run_id, "loss")
        assert sorted((m.step, m.value) for m in loss) == [(s, 100.0 * i + s) for s in range(steps)]
        assert len(client.get_metric_history(r.info.run_id, "acc")) == steps
        assert [a.path for a in client.list_artifacts(r.info.run_id, "notes")] == ["notes/note.txt"]
    assert client.get_run(parent).info.status == "FINISHED"


def test_parent_run_records_the_config_and_a_failed_workflow_fails_its_open_stages(tmp_path, monkeypatch):
    _isolated_env(monkeypatch)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = {"experiment": "x", "optim": {"lr": 0.1, "betas": [0.9, 0.99]}}
    cfg_file = tmp_path / "preset.yaml"
    cfg_file.write_text("optim: {lr: 0.1}\n")
    parent = start_workflow_run(uri, "wf", cfg, [str(cfg_file)])
    done = Tracker(uri, "wf", run_name="done")
    done.finish()
    killed = Tracker(uri, "wf", run_name="killed")  # a job that died without closing its run
    monkeypatch.setenv(PARENT_ENV, "")
    manual = Tracker(uri, "wf", run_name="manual")  # `python -m svt.<step>` by hand: no parent
    monkeypatch.setenv(PARENT_ENV, parent)
    end_workflow_run(uri, "FAILED")
    client = MlflowClient(uri)
    run = client.get_run(parent)
    assert run.info.status == "FAILED"
    assert run.data.params == {"experiment": "x", "optim.lr": "0.1", "optim.betas": "[0.9, 0.99]"}
    assert run.data.tags["svt.config_hash"] == config_hash(cfg)
    assert run.data.tags["svt.git_commit"] == git_commit() != ""
    names = {a.path for a in client.list_artifacts(parent, "config")}
    assert names == {"config/config.yaml", "config/files"}
    saved = yaml.safe_load(Path(client.download_artifacts(parent, "config/config.yaml", str(tmp_path))).read_text())
    assert saved == cfg
    assert {a.path for a in client.list_artifacts(parent, "config/files")} == {"config/files/preset.yaml"}
    assert client.get_run(done.run_id).info.status == "FINISHED"
    assert client.get_run(killed.run_id).info.status == "FAILED"
    assert client.get_run(killed.run_id).data.tags["mlflow.parentRunId"] == parent
    assert client.get_run(manual.run_id).info.status == "RUNNING"  # not ours: left alone
    assert "mlflow.parentRunId" not in client.get_run(manual.run_id).data.tags


@pytest.mark.slow  # starts a real MLflow server: not in the edit loop (make test-fast)
def test_tracking_server_script_http_logging_and_stop_by_pid(tmp_path, monkeypatch):
    """Cluster mode: scripts/mlflow-server.sh starts one server on 127.0.0.1 with a PID file;
    a workflow parent and several processes log over HTTP (artifacts uploaded through it);
    `stop` ends it by its PID."""
    _isolated_env(monkeypatch)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "RESULTS": str(tmp_path / "results"), "PORT": str(port),
           "VENV": str(Path(sys.executable).parent.parent)}
    script = [str(REPO / "scripts" / "mlflow-server.sh")]
    started = subprocess.run(["bash", *script, "start"], env=env, capture_output=True, text=True,
                             timeout=300)
    pidfile = tmp_path / "results" / "mlflow-server.pid"
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert f"MLFLOW_TRACKING_URI=http://127.0.0.1:{port}" in started.stdout
        pid = int(pidfile.read_text())
        uri = f"http://127.0.0.1:{port}"
        parent = start_workflow_run(uri, "concurrent", {"optim": {"lr": 0.1}})  # WRITER's experiment
        assert parent
        note = tmp_path / "note.txt"
        note.write_text("over http")
        procs = [subprocess.Popen([sys.executable, "-c", WRITER, uri, "10", str(i), str(note)],
                                  env={**os.environ, "PYTHONPATH": str(REPO)},
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for i in range(3)]
        outs = [p.communicate(timeout=300) for p in procs]
        assert all(p.returncode == 0 for p in procs), [err[-1500:] for _, err in outs]
        end_workflow_run(uri, "FINISHED")
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name("concurrent")
        children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
        assert len(children) == 3 and all(r.info.status == "FINISHED" for r in children)
        for r in children:
            assert len(client.get_metric_history(r.info.run_id, "loss")) == 10
            assert r.info.artifact_uri.startswith("mlflow-artifacts:")  # through the server
        assert list((tmp_path / "results" / "mlartifacts").rglob("note.txt"))
        assert client.get_run(parent).info.status == "FINISHED"
    finally:
        stopped = subprocess.run(["bash", *script, "stop"], env=env, capture_output=True, text=True,
                                 timeout=120)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped.stdout + stopped.stderr
    assert not pidfile.exists()
    status = Path(f"/proc/{pid}/status")
    alive = status.exists() and "\nState:\tZ" not in status.read_text()  # a zombie has ended
    assert not alive, f"mlflow server PID {pid} still running"


HOSTILE = ["rejected/empty file (0 bytes)", "rejected/can't \"open\" it", "kept/tést ünïcode ✓",
           "rejected/" + "very long reason " * 20, "a(b)", "a_b", "/odd//path/../name/", "((("]


def test_safe_names_are_valid_stable_and_distinct():
    from mlflow.utils.validation import _validate_metric_name, _validate_param_name, _validate_tag_name

    names = safe_names(HOSTILE)
    assert names == safe_names(HOSTILE)  # stable: the same run logs the same keys every time
    assert len(set(names.values())) == len(HOSTILE)  # no entry overwrites another
    assert safe_name("rejected/empty file (0 bytes)") == "rejected/empty_file_0_bytes"
    assert safe_name("eval/random-demo/slow/linear_top1") == "eval/random-demo/slow/linear_top1"
    for safe in names.values():
        assert len(safe) <= 250 and safe.isascii()
        _validate_metric_name(safe)
        _validate_param_name(safe)
        _validate_tag_name(safe)


def test_hostile_names_lose_no_metric_param_or_tag(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    t = Tracker(uri, "hostile")
    t.log_metrics({n: i for i, n in enumerate(HOSTILE)}, step=0)
    t.log_params({n: f"v{i}" for i, n in enumerate(HOSTILE)})
    t.set_tags({n: "x" * 9000 for n in HOSTILE[:2]})
    t.finish()
    run = MlflowClient(uri).get_run(t.run_id)
    names = safe_names(HOSTILE)
    assert {names[n]: float(i) for i, n in enumerate(HOSTILE)} == run.data.metrics
    assert {names[n]: f"v{i}" for i, n in enumerate(HOSTILE)} == run.data.params
    assert all(len(run.data.tags[names[n]]) == 8000 for n in HOSTILE[:2])


def test_a_refused_entry_costs_only_itself_and_is_named(tmp_path, caplog):
    """MLflow refuses a whole batch when one param changes value; the others still land."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    t = Tracker(uri, "refused")
    t.log_params({"lr": 1})
    with caplog.at_level("WARNING", logger="svt.tracking"):
        t.log_params({"lr": 2, "seed": 3, "epochs": 4})
    assert t.enabled
    t.finish()
    assert MlflowClient(uri).get_run(t.run_id).data.params == {"lr": "1", "seed": "3", "epochs": "4"}
    warning = next(r.getMessage() for r in caplog.records if "refused" in r.getMessage())
    assert "1 of 3 params" in warning and "'lr'" in warning


def test_data_run_with_hostile_reject_reasons_and_splits_has_every_metric(tmp_path):
    """The data stage's report on real files: an empty file ("empty file (0 bytes)"), a
    missing one, a too-short one and a split with quotes and unicode in its name; its MLflow
    run has every count."""
    import json

    from conftest import make_video
    from svt import data_report
    from svt.decode import main as decode_main
    from svt.manifest import IndexRow, write_rows

    raw = tmp_path / "raw"
    make_video(raw / "a.mp4", size=(96, 64), seconds=1)
    make_video(raw / "b.mp4", size=(96, 64), seconds=1)
    make_video(raw / "short.mp4", size=(96, 64), seconds=0.2)
    (raw / "empty.mp4").write_bytes(b"")
    rows = [IndexRow("a.mp4", 0, "x", "train"), IndexRow("b.mp4", 0, "x", "val \"2\" (tést)"),
            IndexRow("short.mp4", 0, "x", "train"), IndexRow("empty.mp4", 0, "x", "train"),
            IndexRow("missing.mp4", 0, "x", "train")]
    write_rows(tmp_path / "index.csv", rows, IndexRow)
    assert decode_main(["--index", str(tmp_path / "index.csv"), "--raw-root", str(raw),
                        "--videos-dir", str(tmp_path / "videos"), "--shard", "0", "--num-shards", "1",
                        "--short-side", "48", "--min-frames", "16", "--out", str(tmp_path / "s.csv")]) == 0
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert data_report.main(["--shards", str(tmp_path / "s.csv"), "--rejects", str(tmp_path / "rejects.csv"),
                        "--summary", str(tmp_path / "summary.json"), "--tracking-uri", uri,
                        "--experiment", "data"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert {"empty file (0 bytes)", "file not found"} <= set(summary["rejected_per_reason"])
    expected = {k: summary[k] for k in ("videos", "kept", "rejected", "reject_fraction", "frames", "hours")}
    expected.update({safe_name(f"kept/{k}"): v for k, v in summary["kept_per_split"].items()})
    expected.update({safe_name(f"rejected/{k}"): v for k, v in summary["rejected_per_reason"].items()})
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("data").experiment_id])
    assert run.data.metrics == pytest.approx(expected)
    assert "rejected/empty_file_0_bytes" in run.data.metrics and len(expected) == 11


def test_stage_run_is_the_one_way_a_step_opens_its_run(tmp_path):
    """svt.tracking.add_arguments + stage_run: a new run tagged with its stage, or an attached
    one whose status is put back; no URI, no tracking."""
    import argparse

    from svt import tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ap = argparse.ArgumentParser()
    tracking.add_arguments(ap, experiment="steps", run_name="curate")
    new = tracking.stage_run(ap.parse_args(["--tracking-uri", uri, "--tag", "svt.rule=curate"]),
                             "curate", tags={"svt.out_dir": "/x"})
    new.log_metrics({"videos": 3}, step=0)
    new.finish()
    client = MlflowClient(uri)
    got = client.get_run(new.run_id)
    assert got.info.run_name == "curate" and got.info.status == "FINISHED"
    assert {"svt.stage": "curate", "svt.rule": "curate", "svt.out_dir": "/x"}.items() <= got.data.tags.items()
    # attached with --run-id: logged into, then FINISHED again (not left RUNNING)
    again = tracking.stage_run(ap.parse_args(["--tracking-uri", uri, "--run-id", new.run_id]), "curate")
    assert client.get_run(new.run_id).info.status == "RUNNING"
    again.log_metrics({"videos": 4}, step=1)
    again.finish()
    assert client.get_run(new.run_id).info.status == "FINISHED"
    assert [m.value for m in client.get_metric_history(new.run_id, "videos")] == [3.0, 4.0]
    # a running parent stays running; an explicit status still wins
    parent = Tracker(uri, "steps", run_name="workflow")
    tracking.stage_run(ap.parse_args(["--tracking-uri", uri]), "evaluate", run_id=parent.run_id).finish()
    assert client.get_run(parent.run_id).info.status == "RUNNING"
    tracking.stage_run(ap.parse_args(["--tracking-uri", uri]), "x", run_id=parent.run_id).finish("FAILED")
    assert client.get_run(parent.run_id).info.status == "FAILED"
    off = tracking.stage_run(ap.parse_args([]), "curate")
    assert not off.enabled and off.run_id is None
    off.log_metrics({"a": 1}, 0)
    off.finish()
