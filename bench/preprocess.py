"""Preprocessing speed and peak memory: the Beam pipeline against a plain baseline.

Corpus: WikiText-2 (`../shared/corpora/wikitext-2`), word level, every line gets <eos>
(the standard count: 2,088,628 / 217,646 / 245,569 tokens), and the same corpus with the
training file repeated four times, to show how peak memory grows with the corpus.

Modes, each in its own process so that its peak RSS is its own:
  baseline    one process: count words, tokenize with the same Tokenizer, write GZIP
              TFRecords with tf.io.TFRecordWriter (what the pipeline does, minus Beam)
  beam        lmpipe's pipeline on the DirectRunner, in memory
  beam-mp2    the same with --direct_num_workers=2 --direct_running_mode=multi_processing

Usage: python bench/preprocess.py [--copies 1 4] [--modes baseline beam beam-mp2]
Prints tokens/s, time ratio against the baseline of the same run, and peak RSS.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "..", "..", "shared", "corpora", "wikitext-2")
MODES = ("baseline", "beam", "beam-mp2")
SETTINGS = [
    "tokenizer.kind=word", "tokenizer.lowercase=false", "tokenizer.min_count=1",
    "tokenizer.max_vocab=50000", "tokenizer.add_eos=true", "preprocess.drop_empty_lines=false",
]


def corpus_files(copies: int, scratch: str) -> dict[str, str]:
    files = {s: os.path.join(CORPUS, f"wiki.{s}.tokens") for s in ("train", "valid", "test")}
    if copies > 1:
        big = os.path.join(scratch, f"wiki.train.x{copies}.tokens")
        with open(big, "wb") as out:
            for _ in range(copies):
                with open(files["train"], "rb") as f:
                    out.write(f.read())
        files["train"] = big
    return files


def run_baseline(files: dict[str, str], out_dir: str) -> dict:
    """Two passes, one process: learn the vocabulary, then encode and write records."""
    import tensorflow as tf

    from pipeline.core.config_loader import load_config
    from pipeline.core.constants import RESERVED_TOKENS
    from pipeline.core.records import encode_example
    from pipeline.core.tokenizer import Tokenizer
    from pipeline.preprocess.vocabulary import rank_key, spec_of

    config = load_config(None, SETTINGS)
    spec = spec_of(config.tokenizer)
    batch = config.preprocess.batch_lines

    def batches(path):
        lines = []
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                lines.append(line.rstrip("\n"))
                if len(lines) == batch:
                    yield lines
                    lines = []
        if lines:
            yield lines

    splitter = Tokenizer(spec, vocab=RESERVED_TOKENS)
    counts = collections.Counter()
    for lines in batches(files["train"]):
        counts.update(splitter.split(tf.constant(lines)).flat_values.numpy().tolist())
    items = [(k, v) for k, v in counts.items() if k.decode() not in RESERVED_TOKENS]
    items.sort(key=rank_key, reverse=True)
    vocab = [*RESERVED_TOKENS, *(k.decode() for k, _ in items[: config.tokenizer.max_vocab])]
    tokenizer = Tokenizer(spec, vocab=vocab)
    encode = tf.function(tokenizer.encode_lines, reduce_retracing=True)
    tokens = 0
    options = tf.io.TFRecordOptions(compression_type="GZIP")
    for split, path in files.items():
        with tf.io.TFRecordWriter(os.path.join(out_dir, f"{split}.tfrecord.gz"), options) as writer:
            for offset, lines in enumerate(batches(path)):
                ids = encode(tf.constant(lines)).flat_values.numpy()
                tokens += len(ids)
                writer.write(encode_example(ids.tolist(), b"doc", offset))
    return {"tokens": tokens, "vocab": len(vocab)}


def run_beam(files: dict[str, str], out_dir: str, beam_args: list[str]) -> dict:
    from pipeline.core.config_loader import load_config
    from pipeline.preprocess.run import run_preprocess

    overrides = SETTINGS + [f"data.{s}={p}" for s, p in files.items()] + [f"preprocess.output_dir={out_dir}"]
    result = run_preprocess(load_config(None, overrides), beam_args)
    splits = result.stats["splits"]
    return {"tokens": sum(s["tokens"] for s in splits.values()), "vocab": result.stats["vocab_size"],
            "split_tokens": [splits[s]["tokens"] for s in ("train", "valid", "test")]}


def child(mode: str, copies: int) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        files = corpus_files(copies, scratch)
        out_dir = os.path.join(scratch, "out")
        os.makedirs(out_dir)
        started = time.perf_counter()
        if mode == "baseline":
            result = run_baseline(files, out_dir)
        else:
            extra = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"] if mode == "beam-mp2" else []
            result = run_beam(files, out_dir, extra)
        result["seconds"] = time.perf_counter() - started
    kib = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
              resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    result["peak_rss_mib"] = kib / 1024
    print("RESULT " + json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--copies", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--child", choices=MODES)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.copies[0])
        return
    if not os.path.isdir(CORPUS):
        sys.exit(f"skipped: WikiText-2 not found at {os.path.abspath(CORPUS)}")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=os.path.join(HERE, ".."))
    print(f"{'corpus':10s} {'mode':9s} {'tokens':>10s} {'seconds':>8s} {'tokens/s':>10s} "
          f"{'time/baseline':>13s} {'peak RSS MiB':>12s}")
    for copies in args.copies:
        base_seconds = None
        for mode in args.modes:
            out = subprocess.run([sys.executable, __file__, "--child", mode, "--copies", str(copies)],
                                 env=env, capture_output=True, text=True)
            line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT ")), None)
            if line is None:
                sys.exit(f"{mode} failed:\n{out.stderr[-3000:]}")
            r = json.loads(line[len("RESULT "):])
            if mode == "baseline":
                base_seconds = r["seconds"]
            ratio = f"{r['seconds'] / base_seconds:.2f}x" if base_seconds else "-"
            name = f"wiki2 x{copies}"
            print(f"{name:10s} {mode:9s} {r['tokens']:>10,} {r['seconds']:>8.1f} "
                  f"{r['tokens'] / r['seconds']:>10,.0f} {ratio:>13s} {r['peak_rss_mib']:>12.0f}"
                  + (f"   splits {r['split_tokens']}" if "split_tokens" in r else ""), flush=True)


if __name__ == "__main__":
    main()
