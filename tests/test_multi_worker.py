"""Two worker processes on 127.0.0.1 train with MultiWorkerMirroredStrategy (TF_CONFIG)
to the perplexity of one process with the same global batch; a killed worker rejoins."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from pipeline.orchestrate.cli import main
from trainer.distribute import local_tf_configs

from conftest import latest_checkpoint_step, write


def _args(root, corpus, *extra):
    return ["--set", f"data.train={corpus}", "--set", "data.format=lines",
            "--set", f"preprocess.output_dir={root / 'data'}", "--set", f"train.output_dir={root / 'train'}",
            "--set", "model.hidden_dim=32", "--set", "model.embedding_dim=32", "--set", "model.num_layers=1",
            "--set", "model.dropout=0.0", "--set", "train.bptt=10", "--set", "train.epochs=2",
            "--set", "train.optimizer=adam", "--set", "train.learning_rate=0.01",
            "--set", f"tracking.uri=sqlite:///{root}/mlflow.db", *extra]


def _metrics(root):
    (run,) = os.listdir(root / "train")
    return json.load(open(root / "train" / run / "model" / "metrics.json"))


def _launch(root, corpus, tf_configs, index, *extra):
    env = dict(os.environ, TF_CONFIG=tf_configs[index])
    command = [sys.executable, "-m", "pipeline.orchestrate.cli", "train",
               *_args(root, corpus, "--set", "train.distribute=multi_worker", "--set", "train.batch_size=4", *extra)]
    log = open(root / f"worker-{index}.log", "ab")
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root)


def _corpus(tmp_path):
    text = "".join(f"w{i % 11} w{(i * 7) % 13} w{i % 5} and w{(i * 3) % 17}\n" for i in range(800))
    return write(tmp_path / "corpus.txt", text)


def _wait(procs, root, seconds=300):
    deadline = time.time() + seconds
    for proc in procs:
        proc.wait(timeout=max(1, deadline - time.time()))
    logs = {p.name: p.read_text(errors="replace")[-3000:] for p in root.glob("worker-*.log")}
    return [p.returncode for p in procs], logs


@pytest.mark.slow
def test_two_workers_match_one_process_with_the_same_global_batch(tmp_path):
    corpus = _corpus(tmp_path)
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["preprocess", *_args(one, corpus)]) == 0
    assert main(["train", *_args(one, corpus, "--set", "train.batch_size=8")]) == 0
    expected = _metrics(one)

    two.mkdir()
    assert main(["preprocess", *_args(two, corpus)]) == 0
    tf_configs = local_tf_configs(2)
    codes, logs = _wait([_launch(two, corpus, tf_configs, i) for i in range(2)], two)
    assert codes == [0, 0], logs
    got = _metrics(two)
    assert got["replicas"] == 2 and got["global_batch"] == 8
    assert got["train_steps_per_epoch"] == expected["train_steps_per_epoch"]
    for key in ("valid_ppl", "test_ppl"):
        assert got[key] == pytest.approx(expected[key], rel=0.01), key
    # Only the chief wrote: one checkpoint folder, no worker leftovers, one MLflow run.
    (run,) = os.listdir(two / "train")
    assert not (two / "train" / run / "workers").exists() or not os.listdir(two / "train" / run / "workers")
    assert "worker finished 2 epochs" in logs["worker-1.log"]


@pytest.mark.slow
def test_killed_worker_restarts_and_the_run_completes(tmp_path):
    corpus = _corpus(tmp_path)
    root = tmp_path / "run"
    root.mkdir()
    assert main(["preprocess", *_args(root, corpus)]) == 0
    tf_configs = local_tf_configs(2)
    extra = ("--set", "train.checkpoint_every=10", "--set", "train.epochs=3")
    procs = [_launch(root, corpus, tf_configs, i, *extra) for i in range(2)]
    deadline = time.time() + 240
    while latest_checkpoint_step(root) < 20 and time.time() < deadline and all(p.poll() is None for p in procs):
        time.sleep(0.05)
    assert all(p.poll() is None for p in procs), "training ended before a worker could be killed"
    os.kill(procs[1].pid, signal.SIGKILL)  # worker 1 dies mid-run
    killed_at = latest_checkpoint_step(root)
    # Its peer's collectives fail; a restart policy (Kubernetes restartPolicy: OnFailure)
    # brings both back with the same TF_CONFIG, and they resume from the chief's last
    # checkpoint.
    procs[0].wait(timeout=120)  # coordination-service heartbeats tell it within seconds
    assert procs[0].returncode == 5  # ClusterError: one line saying how to resume
    assert "restart every worker with the same TF_CONFIG" in (root / "worker-0.log").read_text()
    tf_configs = local_tf_configs(2)
    codes, logs = _wait([_launch(root, corpus, tf_configs, i, *extra) for i in range(2)], root)
    assert codes == [0, 0], logs
    metrics = _metrics(root)
    assert metrics["epochs"] == 3 and metrics["replicas"] == 2
    assert "(resumed)" in logs["worker-0.log"]
    assert killed_at >= 20
