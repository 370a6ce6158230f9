"""Training tokens/s of 1 vs 2 CPU workers (MultiWorkerMirroredStrategy on 127.0.0.1).

The Zaremba small shape (2x200 LSTM, vocab 10k, bptt 35) trains for `--steps` timed
steps (after warm-up) in each setting, all measured in this one run:
  1 process       train.batch_size 20 (the baseline)
  2 workers weak  20 per worker: global batch 40, the same work per worker
  2 workers strong 10 per worker: global batch 20, the baseline's work split in two
tokens/s counts the global batch. On a 2-core machine two workers share the cores a
single process already uses (TensorFlow's intra-op threads), so expect little gain:
the figure says what the collectives (gradient all-reduce, state all-gather) cost.

Usage: python bench/distributed.py [--steps 30]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

VOCAB, BPTT, HIDDEN = 10_000, 35, 200


def worker(steps: int, batch: int, distribute: str) -> None:
    import tempfile

    import keras

    from lstm_speed import time_training  # this folder's training timer (run as a script)
    from trainer.distribute import make_strategy
    from trainer.language_model import LanguageModel
    from trainer.training import is_chief

    strategy = make_strategy(distribute)
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = LanguageModel(VOCAB, HIDDEN, HIDDEN, num_layers=2)
        model.build()
    with tempfile.TemporaryDirectory() as tmp:
        rate = time_training(model, steps, tmp, batch=batch, strategy=strategy)
    if is_chief(strategy):
        print(json.dumps({"tokens_per_sec": rate, "replicas": strategy.num_replicas_in_sync}))


def run_setting(workers: int, batch: int, steps: int) -> dict:
    """Starts `workers` processes (TF_CONFIG when more than one); the chief's figures."""
    from trainer.distribute import local_tf_configs

    tf_configs = local_tf_configs(workers)
    procs = []
    for index in range(workers):
        env = dict(os.environ)
        distribute = "none"
        if workers > 1:
            distribute = "multi_worker"
            env["TF_CONFIG"] = tf_configs[index]
        command = [sys.executable, __file__, "--worker", "--steps", str(steps), "--batch", str(batch),
                   "--distribute", distribute]
        procs.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=1800) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        if p.returncode != 0:
            raise RuntimeError(f"worker failed:\n{err[-2000:]}")
    return json.loads(outputs[0][0].strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=20, help=argparse.SUPPRESS)
    parser.add_argument("--distribute", default="none", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.steps, args.batch, args.distribute)
        return
    print(f"cores: {os.cpu_count()}; Zaremba small shape, bptt {BPTT}, {args.steps} timed steps")
    print(f"{'setting':24s} {'global batch':>12s} {'tokens/s':>10s} {'vs 1 process':>13s}")
    base = None
    for name, workers, batch in [("1 process", 1, 20), ("2 workers, weak scaling", 2, 20),
                                 ("2 workers, strong scaling", 2, 10)]:
        result = run_setting(workers, batch, args.steps)
        rate = result["tokens_per_sec"]
        base = base or rate
        print(f"{name:24s} {batch * workers:>12d} {rate:>10,.0f} {rate / base:>12.2f}x", flush=True)


if __name__ == "__main__":
    main()
