"""Training and registering against a real `mlflow server` on 127.0.0.1 (SQLite backend),
over HTTP (the `mlflow_server` fixture of conftest)."""

import json
import os

import pytest
from mlflow import MlflowClient

from pipeline.orchestrate.cli import main

from conftest import free_ports, pyfunc_in_clean_process, session_texts, write


def _corpus_args(tmp_path, uri, *extra):
    text = "".join(f"the cat number {i % 7} sat on the mat {i % 5}\n" for i in range(300))
    corpus = write(tmp_path / "c" / "corpus.txt", text)
    return ["--set", f"data.train={corpus}", "--set", "data.format=lines",
            "--set", f"preprocess.output_dir={tmp_path / 'data'}", "--set", f"train.output_dir={tmp_path / 'train'}",
            "--set", "model.hidden_dim=16", "--set", "model.embedding_dim=16", "--set", "model.num_layers=1",
            "--set", "train.batch_size=4", "--set", "train.bptt=8", "--set", "train.epochs=2",
            "--set", "train.optimizer=adam", "--set", "train.learning_rate=0.01",
            "--set", f"tracking.uri={uri}", "--set", "tracking.experiment=it",
            "--set", "tracking.registered_model=tiny-lm", "--set", f"export.base_path={tmp_path / 'export'}",
            "--set", "tracking.system_metrics_interval_s=0.2", *extra]


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
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    fingerprint = metrics["fingerprint"]
    assert sorted(inputs) == sorted(f"{fingerprint[:16]}-{s}" for s in ("test", "train", "valid"))
    assert {d.dataset.digest for d in inputs.values()} == {fingerprint[:36]}
    assert [t.value for t in inputs[f"{fingerprint[:16]}-train"].tags] == ["training"]
    stats = json.load(open(os.path.join(metrics["dataset_dir"], "stats.json")))
    profile = json.loads(inputs[f"{fingerprint[:16]}-valid"].dataset.profile)
    assert profile["lines"] == stats["splits"]["valid"]["lines"] and profile["vocab_size"] == stats["vocab_size"]
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(run.data.metrics)
    assert not client.search_model_versions("name='tiny-lm'")  # the export registers, not the training

    assert main(["export", "--no-check", *args]) == 0
    (version,) = client.search_model_versions("name='tiny-lm'")
    assert version.run_id == run.info.run_id and version.source.startswith("models:/m-")
    assert version.tags["export_path"] == str(tmp_path / "export" / "lm" / "1")
    assert version.tags["export_version"] == "1"
    assert float(version.tags["test_ppl"]) == pytest.approx(metrics["test_ppl"], rel=1e-3)
    calls = [{"method": "greedy", "max_new_tokens": 6}, {"method": "top_p", "p": 0.8, "seed": 3}]
    answers = pyfunc_in_clean_process("models:/tiny-lm/1", uri, ["the cat", "on the"], calls)
    export = tmp_path / "export" / "lm" / "1"
    assert answers == [session_texts(export, "greedy", ["the cat", "on the"], max_new_tokens=6),
                       session_texts(export, "top_p", ["the cat", "on the"], p=0.8, seed=3)]


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
    assert metrics["epochs"] == 3
    assert f"MLflow at {uri} failed to log metrics" in capsys.readouterr().err


def test_unreachable_server_at_start_names_the_uri(tmp_path, capsys):
    uri = f"http://127.0.0.1:{free_ports()[0]}"
    args = _corpus_args(tmp_path, uri)
    assert main(["preprocess", *args]) == 0
    assert main(["train", *args]) == 4
    err = capsys.readouterr().err
    assert f"MLflow tracking server {uri} is unreachable" in err
    assert not os.path.exists(tmp_path / "train")
