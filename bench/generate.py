"""Generation speed of the exported SavedModel against a Python loop over the step function.

A Zaremba-small-shaped model (2x200 LSTM, 10k vocabulary, random weights: speed does not
depend on training) is exported with lmpipe's own export; every signature generates
exactly 64 new tokens (min = max = 64) at batch 1 and batch 16. The baseline in the same
run is a Python loop that calls a compiled `model.step` once per token and takes the
argmax. Beam search is timed at widths 1, 4 and 8. At batch 1 a token must read every
weight once (about 10 MB); that read time, at this machine's measured memory bandwidth,
is the lower bound printed beside the per-token times.

Usage: python bench/generate.py [--tokens 64]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from pipeline.constants import RESERVED_TOKENS  # noqa: E402
from pipeline.tokenizer import TokenizerSpec, vocab_file_text  # noqa: E402
from serving.export import export_model  # noqa: E402
from serving.knobs import KNOB_SPECS  # noqa: E402
from trainer.language_model import build_language_model  # noqa: E402

VOCAB, HIDDEN = 10_000, 200


def make_model_dir(folder: str) -> tuple[str, object]:
    """A finished-training-shaped folder with random weights and a synthetic vocabulary."""
    keras.utils.set_random_seed(0)
    config = {"vocab_size": VOCAB, "embedding_dim": HIDDEN, "hidden_dim": HIDDEN, "num_layers": 2}
    model = build_language_model(config)
    vocab = [*RESERVED_TOKENS, *(f"w{i}" for i in range(VOCAB - len(RESERVED_TOKENS)))]
    with open(os.path.join(folder, "vocab.txt"), "w") as f:
        f.write(vocab_file_text(vocab))
    with open(os.path.join(folder, "tokenizer.json"), "w") as f:
        f.write(TokenizerSpec(kind="word").to_json(VOCAB))
    json.dump(config, open(os.path.join(folder, "model_config.json"), "w"))
    json.dump({"test_ppl": 0.0}, open(os.path.join(folder, "metrics.json"), "w"))
    model.save_weights(os.path.join(folder, "model.weights.h5"))
    return folder, model


def signature_inputs(fn, batch: int, tokens: int, **override) -> dict:
    specs = fn.structured_input_signature[1]
    values = {}
    for name, spec in specs.items():
        if name == "prompt":
            values[name] = tf.constant(["w1 w2 w3"] * batch)
        else:
            value = override.get(name, tokens if name in ("max_new_tokens", "min_new_tokens") else KNOB_SPECS[name][1])
            values[name] = tf.fill([batch], tf.cast(value, spec.dtype))
    return values


def time_call(fn, inputs, repeats: int = 3) -> float:
    fn(**inputs)  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn(**inputs)
    _ = {k: v.numpy() for k, v in out.items()}
    return (time.perf_counter() - start) / repeats


def python_loop(model, batch: int, tokens: int, repeats: int = 3) -> float:
    step = tf.function(model.step, reduce_retracing=True)
    prime = tf.function(model.prime, reduce_retracing=True)
    prompt = tf.constant([[3, 5, 6, 7]] * batch)
    lengths = tf.fill([batch], 4)

    def run():
        logits, states = prime(prompt, lengths)
        for _ in range(tokens):
            ids = tf.argmax(logits, axis=1, output_type=tf.int32)
            logits, states = step(ids, states)
        return logits.numpy()

    run()
    start = time.perf_counter()
    for _ in range(repeats):
        run()
    return (time.perf_counter() - start) / repeats


def memory_bandwidth() -> float:
    x = tf.ones([100_000_000 // 4], tf.float32)
    f = tf.function(lambda x: tf.reduce_sum(x))
    f(x).numpy()
    start = time.perf_counter()
    for _ in range(10):
        f(x).numpy()
    return 10 * 100_000_000 / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    n = args.tokens
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, model = make_model_dir(tmp)
        export = export_model(model_dir, os.path.join(tmp, "export"), "lm", max_new_tokens=n)
        loaded = tf.saved_model.load(export.path)
        weight_bytes = sum(int(np.prod(w.shape)) * 4 for w in model.weights if "embedding" not in w.path)
        weight_bytes += HIDDEN * 4  # one embedding row
        bound = weight_bytes / memory_bandwidth()
        print(f"weights read per token at batch 1: {weight_bytes / 1e6:.1f} MB; "
              f"read-time bound {bound * 1e3:.2f} ms/token")
        print(f"{'what':24s} {'batch':>5s} {'ms/token':>9s} {'tokens/s':>10s} {'vs loop':>8s} {'x bound':>8s}")
        for batch in (1, 16):
            loop = python_loop(model, batch, n) / n
            print(f"{'python loop (step)':24s} {batch:>5d} {loop * 1e3:>9.2f} {batch / loop:>10,.0f} "
                  f"{'1.00x':>8s} {loop / bound if batch == 1 else 0:>8.1f}")
            for name in ("greedy", "sample", "top_k", "top_p"):
                fn = loaded.signatures[name]
                per_token = time_call(fn, signature_inputs(fn, batch, n)) / n
                print(f"{name:24s} {batch:>5d} {per_token * 1e3:>9.2f} {batch / per_token:>10,.0f} "
                      f"{loop / per_token:>7.2f}x {per_token / bound if batch == 1 else 0:>8.1f}")
        fn = loaded.signatures["beam_search"]
        base = None
        for width in (1, 4, 8):
            seconds = time_call(fn, signature_inputs(fn, 1, n, beam_width=width), repeats=2)
            base = base or seconds
            print(f"{'beam_search width ' + str(width):24s} {1:>5d} {seconds / n * 1e3:>9.2f} "
                  f"{n / seconds:>10,.0f} {'':>8s} cost {seconds / base:.2f}x width 1")


if __name__ == "__main__":
    main()
