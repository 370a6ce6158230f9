"""`lmpipe train` killed with SIGKILL mid-epoch resumes and ends where an uninterrupted run ends."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from pipeline.orchestrate.cli import main

from conftest import latest_checkpoint_step, write


def _args(root, corpus):
    return ["--set", f"data.train={corpus}", "--set", "data.format=lines",
            "--set", f"preprocess.output_dir={root / 'data'}", "--set", f"train.output_dir={root / 'train'}",
            "--set", "model.hidden_dim=48", "--set", "model.embedding_dim=48", "--set", "model.num_layers=2",
            "--set", "model.dropout=0.2", "--set", "train.batch_size=4", "--set", "train.bptt=12",
            "--set", "train.epochs=2", "--set", "train.checkpoint_every=20",
            "--set", f"tracking.uri=sqlite:///{root}/mlflow.db"]


def _metrics(root):
    (run,) = os.listdir(root / "train")
    return json.load(open(root / "train" / run / "model" / "metrics.json"))


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path):
    text = "".join(f"w{i % 11} w{(i * 7) % 13} w{i % 5} and w{(i * 3) % 17}\n" for i in range(4000))
    corpus = write(tmp_path / "corpus.txt", text)
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert main(["preprocess", *_args(full, corpus)]) == 0
    assert main(["train", *_args(full, corpus)]) == 0
    expected = _metrics(full)

    assert main(["preprocess", *_args(cut, corpus)]) == 0
    steps_per_epoch = expected["train_steps_per_epoch"]
    command = [sys.executable, "-m", "pipeline.orchestrate.cli", "train", *_args(cut, corpus)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while latest_checkpoint_step(cut) <= steps_per_epoch + 20 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    reached, needed = latest_checkpoint_step(cut), steps_per_epoch + 21
    assert proc.poll() is None, (f"training ended (exit {proc.returncode}) at checkpoint step {reached} "
                                 "before it could be killed mid-epoch")
    assert reached >= needed, (f"training reached checkpoint step {reached} of the {needed} needed in 240 s "
                               "(a loaded machine); nothing was killed")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = latest_checkpoint_step(cut)
    assert steps_per_epoch < killed_at < 2 * steps_per_epoch, (
        f"killed at checkpoint step {killed_at}, not inside epoch 2 (steps {steps_per_epoch + 1} to "
        f"{2 * steps_per_epoch - 1})")
    assert not (cut / "train" / os.listdir(cut / "train")[0] / "model").exists()

    assert main(["train", *_args(cut, corpus)]) == 0
    resumed = _metrics(cut)
    for key in ("valid_ppl", "test_ppl"):
        assert resumed[key] == pytest.approx(expected[key], rel=1e-4), key
