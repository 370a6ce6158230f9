"""A character-level LSTM LM on Tiny Shakespeare through lmpipe itself, on nanoGPT's split.

`../shared/corpora/tinyshakespeare/input.txt` is cut as nanoGPT cuts it: the first 90% of
its characters train (1,003,854), the last 10% validate (111,540; a copy of it is the test
split, which nanoGPT does not have). lmpipe preprocesses both (`tokenizer.kind: char`, case
kept, empty lines kept, <eos> standing for each newline), so the validation stream holds one
token per character, newlines included, and its loss in nats per token is nanoGPT's loss
in nats per character. The bench checks that count, trains with lmpipe's trainer (an
MLflow run like any other), prints valid loss in nats and bits per character, epochs and
wall time, then exports the model and prints a sample from each decoder.

Anchors (../shared/corpora/RESULTS.md, Transformers): nanoGPT's "baby GPT" (10.7M
parameters, ~3 min on an A100) 1.4697 nats; its CPU configuration 1.88. Target: the LSTM
below 1.47 nats in at most 60 minutes on 2 cores. Measured 2026-12-01 (defaults, 2x512, 20 epochs):
1.4291 nats/char (2.062 bits/char) in 56.7 min; docs/benchmarks.md has the samples.

Usage: python bench/charlm.py [--epochs N] [--hidden 512] [--layers 2] [--work DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "..", "..", "shared", "corpora", "tinyshakespeare", "input.txt")
DECODERS = ("greedy", "beam_search", "sample", "top_k", "top_p")


def split_like_nanogpt(path: str, out_dir: str) -> tuple[list[str], int]:
    """train.txt = the first 90% of the characters, valid.txt = the rest, test.txt a copy of
    valid.txt (a file feeds one split) -> their paths and the number of validation characters."""
    text = open(path, encoding="utf-8").read()
    cut = int(len(text) * 0.9)
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for name, part in (("train.txt", text[:cut]), ("valid.txt", text[cut:]), ("test.txt", text[cut:])):
        paths.append(os.path.join(out_dir, name))
        with open(paths[-1], "w", encoding="utf-8") as f:
            f.write(part)
    return paths, len(text) - cut


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--embedding", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--dropout", type=float, default=0.25)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--bptt", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--work", help="work folder (default: a temporary one)")
    parser.add_argument("--prompt", default="ROMEO:")
    args = parser.parse_args()
    if not os.path.exists(CORPUS):
        sys.exit(f"skipped: Tiny Shakespeare not found at {os.path.abspath(CORPUS)}")
    from pipeline.core.config_loader import load_config
    from pipeline.orchestrate.cli import main as lmpipe
    from pipeline.preprocess.run import run_preprocess
    from serving.export import export_model
    from trainer.train_run import train_model

    work = args.work or tempfile.mkdtemp(prefix="charlm-bench-")
    (train_file, valid_file, test_file), valid_chars = split_like_nanogpt(CORPUS, os.path.join(work, "corpus"))
    overrides = [
        f"data.train={train_file}", f"data.valid={valid_file}", f"data.test={test_file}", "data.format=text",
        "tokenizer.kind=char", "tokenizer.lowercase=false", "tokenizer.add_eos=true", "tokenizer.min_count=1",
        "preprocess.drop_empty_lines=false",
        f"model.embedding_dim={args.embedding}", f"model.hidden_dim={args.hidden}", f"model.num_layers={args.layers}",
        f"model.dropout={args.dropout}", "model.tie_embeddings=false",
        f"train.batch_size={args.batch}", f"train.bptt={args.bptt}", f"train.epochs={args.epochs}",
        "train.optimizer=adam", f"train.learning_rate={args.lr}", "train.lr_decay=0.85",
        "train.lr_decay_start_epoch=6", "train.clip_norm=5", "train.init_scale=0.08",
        f"preprocess.output_dir={work}/data", f"train.output_dir={work}/train",
        f"tracking.uri=sqlite:///{work}/mlflow.db", "tracking.experiment=charlm",
        f"export.base_path={work}/export", "export.model_name=charlm", "export.max_new_tokens=256",
    ]
    config = load_config(None, overrides)
    started = time.perf_counter()
    dataset = run_preprocess(config, [])
    stats = json.load(open(os.path.join(dataset.dataset_dir, "stats.json")))
    tokens = stats["splits"]["valid"]["tokens"]
    if tokens != valid_chars:
        sys.exit(f"the validation stream has {tokens:,} tokens for {valid_chars:,} characters; "
                 "the loss would not be per character")
    print(f"dataset: {stats['vocab_size']} tokens in the vocabulary ({stats['vocab_size'] - 4} characters), "
          f"train {stats['splits']['train']['tokens']:,} / valid {tokens:,} tokens = characters", flush=True)
    result = train_model(config, dataset.dataset_dir, verbose=True)
    wall = time.perf_counter() - started
    m = result.metrics
    print(f"Tiny Shakespeare char LSTM {args.layers}x{args.hidden}: valid {m['valid_loss']:.4f} nats/char "
          f"({m['valid_loss'] / math.log(2):.3f} bits/char, ppl {m['valid_ppl']:.3f}), {m['epochs']} epochs, "
          f"{m['param_count']:,} parameters, wall {wall / 60:.1f} min; MLflow run {m['mlflow_run_id']}; "
          f"work folder {work}", flush=True)
    export = export_model(result.model_dir, config.export.base_path, config.export.model_name,
                          max_new_tokens=256)
    for method in DECODERS:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            lmpipe(["generate", "--export-dir", export.path, "--method", method, "--max-new-tokens", "200",
                    "--min-new-tokens", "200", "--seed", "1", args.prompt])
        print(f"== {method}\n{out.getvalue().strip()}", flush=True)


if __name__ == "__main__":
    main()
