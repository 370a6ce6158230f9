"""Training against a real `mlflow server` on 127.0.0.1 (SQLite backend), over HTTP."""

import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest
from mlflow import MlflowClient

from pipeline.cli import main

from conftest import free_ports, write


@pytest.fixture
def mlflow_server(tmp_path):
    port = free_ports()[0]
    mlflow_bin = os.path.join(os.path.dirname(sys.executable), "mlflow")
    proc = subprocess.Popen(
        [mlflow_bin, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
         "--artifacts-destination", str(tmp_path / "server-artifacts")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(uri + "/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("mlflow server did not start in 90 s")
    yield uri, proc
    if proc.poll() is None:
        os.killpg(proc.pid, 9)
        proc.wait()


def _corpus_args(tmp_path, uri, *extra):
    text = "".join(f"the cat number {i % 7} sat on the mat {i % 5}\n" for i in range(300))
    corpus = write(tmp_path / "c" / "corpus.txt", text)
    return ["--set", f"data.train={corpus}", "--set", "data.format=lines",
            "--set", f"preprocess.output_dir={tmp_path / 'data'}", "--set", f"train.output_dir={tmp_path / 'train'}",
            "--set", "model.hidden_dim=16", "--set", "model.embedding_dim=16", "--set", "model.num_layers=1",
            "--set", "train.batch_size=4", "--set", "train.bptt=8", "--set", "train.epochs=2",
            "--set", "train.optimizer=adam", "--set", "train.learning_rate=0.01",
            "--set", f"tracking.uri={uri}", "--set", "tracking.experiment=it",
            "--set", "tracking.registered_model=tiny-lm", *extra]


@pytest.mark.slow
def test_train_logs_run_metrics_artifacts_and_version_over_http(tmp_path, mlflow_server):
    uri, _ = mlflow_server
    args = _corpus_args(tmp_path, uri)
    assert main(["preprocess", *args]) == 0
    assert main(["train", *args]) == 0
    (run_dir,) = os.listdir(tmp_path / "train")
    metrics = json.load(open(tmp_path / "train" / run_dir / "model" / "metrics.json"))

    client = MlflowClient(uri)
    run = client.get_run(metrics["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["model.hidden_dim"] == "16" and int(run.data.params["param_count"]) > 0
    assert run.data.tags["data_fingerprint"] == metrics["fingerprint"]
    assert run.data.metrics["test_ppl"] == pytest.approx(metrics["test_ppl"])
    history = client.get_metric_history(run.info.run_id, "valid_ppl")
    assert [m.step for m in history] == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert {"model/model.weights.h5", "model/model_config.json", "model/vocab.txt",
            "model/learning_curves.png", "model/stats.json"} <= artifacts
    version = client.get_model_version("tiny-lm", metrics["registered_version"])
    assert version.run_id == run.info.run_id
    assert float(version.tags["test_ppl"]) == pytest.approx(metrics["test_ppl"], rel=1e-3)


@pytest.mark.slow
def test_server_lost_mid_run_training_goes_on(tmp_path, mlflow_server, capsys, monkeypatch):
    uri, proc = mlflow_server
    args = _corpus_args(tmp_path, uri, "--set", "train.epochs=3")
    assert main(["preprocess", *args]) == 0
    from trainer import tracking

    real = tracking.RunTracker.log_metrics

    def kill_server_after_first_epoch(self, metrics, step=None):
        real(self, metrics, step)
        if step == 1:
            os.killpg(proc.pid, 9)
            proc.wait()

    monkeypatch.setattr(tracking.RunTracker, "log_metrics", kill_server_after_first_epoch)
    assert main(["train", *args]) == 0
    (run_dir,) = os.listdir(tmp_path / "train")
    metrics = json.load(open(tmp_path / "train" / run_dir / "model" / "metrics.json"))
    assert metrics["epochs"] == 3 and "registered_version" not in metrics
    assert f"MLflow at {uri} failed to log metrics" in capsys.readouterr().err


def test_unreachable_server_at_start_names_the_uri(tmp_path, capsys):
    uri = f"http://127.0.0.1:{free_ports()[0]}"
    args = _corpus_args(tmp_path, uri)
    assert main(["preprocess", *args]) == 0
    assert main(["train", *args]) == 4
    err = capsys.readouterr().err
    assert f"MLflow tracking server {uri} is unreachable" in err
    assert not os.path.exists(tmp_path / "train")
