"""`lmpipe run` end to end on a tiny corpus: skips, gating, locking, kill and resume."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from mlflow import MlflowClient

from pipeline.core.config_loader import load_config
from pipeline.orchestrate.cli import main
from pipeline.orchestrate.scheduled_run import EXIT_NOT_BETTER
from serving.model_versions import ModelVersions
from serving.serving_config import read_models_config

from conftest import latest_checkpoint_step, run_args as _args, run_corpus as _corpus


def _manifest(root):
    return json.load(open(root / "runs" / "manifests" / "latest.json"))


def _registry(root):
    return MlflowClient(f"sqlite:///{root}/mlflow.db")


@pytest.mark.slow
def test_second_run_skips_everything(tmp_path):
    _corpus(tmp_path)
    assert main(["run", *_args(tmp_path, "--set", "run.reports=true")]) == 0
    first = _manifest(tmp_path)
    assert first["decision"] == "promoted" and [s["stage"] for s in first["stages"]] == [
        "preprocess", "train", "report", "evaluate", "export", "promote"]
    report = next(s for s in first["stages"] if s["stage"] == "report")
    assert os.path.exists(os.path.join(report["folder"], "decoding.csv"))
    assert main(["run", *_args(tmp_path, "--set", "run.reports=true")]) == 0
    second = _manifest(tmp_path)
    assert second["decision"] == "nothing_new"
    assert [s["stage"] for s in second["stages"]] == ["preprocess"] and second["stages"][0]["skipped"]
    assert len(_registry(tmp_path).search_model_versions("name='lm'")) == 1
    assert sorted(os.listdir(tmp_path / "export" / "lm")) == ["1"]


@pytest.mark.slow
def test_new_data_is_promoted_only_when_better(tmp_path):
    _corpus(tmp_path)
    assert main(["run", *_args(tmp_path)]) == 0  # v1: the first champion
    _corpus(tmp_path, files=1, offset=5)  # a new file: a new dataset
    worse = _args(tmp_path, "--set", "train.learning_rate=0.00001", "--set", "promote.canary=true")
    assert main(["run", *worse]) == EXIT_NOT_BETTER
    m = _manifest(tmp_path)
    assert m["decision"] == "not_better" and "does not beat" in m["reason"]
    registry = _registry(tmp_path)
    assert str(registry.get_model_version_by_alias("lm", "champion").version) == "1"
    assert str(registry.get_model_version_by_alias("lm", "challenger").version) == "2"
    assert read_models_config(str(tmp_path / "export")) == {
        "name": "lm", "base_path": str(tmp_path / "export" / "lm"), "versions": [1, 2],
        "labels": {"stable": 1, "canary": 2}}
    # TF Serving's batching and monitoring files beside models.config.
    assert sorted(m["serving_files"]) == ["batching_parameters.txt", "monitoring_config.txt"]
    assert (tmp_path / "export" / "batching_parameters.txt").read_text().startswith("max_batch_size { value: 64 }")

    better = _args(tmp_path, "--set", "train.epochs=4")
    assert main(["run", *better]) == 0
    m = _manifest(tmp_path)
    assert m["decision"] == "promoted" and str(m["champion_before"]) == "1"
    evaluate = next(s for s in m["stages"] if s["stage"] == "evaluate")
    assert evaluate["metric"] == "test_ppl" and evaluate["new"] < evaluate["champion"]  # both on the new test data
    assert str(registry.get_model_version_by_alias("lm", "champion").version) == "3"
    config = read_models_config(str(tmp_path / "export"))
    assert config["labels"] == {"stable": 3} and config["versions"] == [3]
    # The promotion moved both: the registry's champion is the export that `stable` labels.
    champion = registry.get_model_version_by_alias("lm", "champion")
    assert champion.tags["export_version"] == "3" and champion.tags["export_path"] == str(tmp_path / "export" / "lm" / "3")
    assert champion.source.startswith("models:/m-")
    # lmpipe serve on the base path (with the models.config beside it) serves the champion.
    served = ModelVersions(str(tmp_path / "export" / "lm"), config_dir=str(tmp_path / "export")).start()
    try:
        assert served.latest().version == 3 and served.label("stable").version == 3
        assert served.get(2) is None  # no longer pinned
    finally:
        served.stop()


@pytest.mark.slow
def test_second_concurrent_run_exits_locked(tmp_path):
    _corpus(tmp_path)
    lmpipe = os.path.join(os.path.dirname(sys.executable), "lmpipe")
    first = subprocess.Popen([lmpipe, "run", *_args(tmp_path)], cwd=tmp_path,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        lock = tmp_path / "runs" / "lmpipe-run.lock"
        deadline = time.time() + 120
        while not (lock.exists() and lock.read_text().strip() == str(first.pid)):
            assert time.time() < deadline and first.poll() is None
            time.sleep(0.05)
        started = time.time()
        second = subprocess.run([lmpipe, "run", *_args(tmp_path)], cwd=tmp_path, capture_output=True, text=True)
        assert second.returncode == 11
        assert f"another lmpipe run (pid {first.pid}) is running" in second.stderr
        assert time.time() - started < 60  # it did not wait for the first one
        assert first.wait(timeout=300) == 0
    finally:
        if first.poll() is None:
            first.kill()


@pytest.mark.slow
def test_killed_during_training_resumes_with_one_new_version(tmp_path):
    _corpus(tmp_path, files=2, lines=1500)
    args = _args(tmp_path, "--set", "train.checkpoint_every=10", "--set", "train.epochs=3")
    lmpipe = os.path.join(os.path.dirname(sys.executable), "lmpipe")
    proc = subprocess.Popen([lmpipe, "run", *args], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while latest_checkpoint_step(tmp_path) < 30 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    reached = latest_checkpoint_step(tmp_path)
    assert proc.poll() is None, f"the run ended (exit {proc.returncode}) at checkpoint step {reached} before it could be killed"
    assert reached >= 30, f"training reached checkpoint step {reached} of the 30 needed in 240 s (a loaded machine)"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert main(["run", *args]) == 0  # the stale lock is taken over
    m = _manifest(tmp_path)
    assert m["decision"] == "promoted" and m["stale_lock_taken_from"] == proc.pid
    assert len(_registry(tmp_path).search_model_versions("name='lm'")) == 1
    history = json.load(open(os.path.join(m["model_dir"], "history.json")))
    assert [h["epoch"] for h in history] == [1, 2, 3]


def test_until_stops_after_a_stage(tmp_path):
    _corpus(tmp_path)
    from pipeline.orchestrate.scheduled_run import run_pipeline

    manifest = run_pipeline(load_config(None, _args(tmp_path)[1::2]), until="preprocess", verbose=False)
    assert manifest["decision"] == "stopped_after_preprocess" and manifest["exit_code"] == 0
    assert not (tmp_path / "train").exists()
