"""Generation speed of the exported SavedModel: every decoding signature against greedy.

A Zaremba-small-shaped model (2x200 LSTM, 10k vocabulary) is exported with lmpipe's own
export; every signature generates exactly 64 new tokens (min = max = 64) at batch 1 and
batch 16, on two next-token distributions:

    random   random weights: nearly flat (perplexity ~10,000; the p = 0.9 nucleus holds
             ~9,000 tokens), as at a high temperature or early in training
    peaked   the output layer scaled and given a Zipf prior (bias -1.1 log(1 + id)), so
             the model looks trained: perplexity ~100, a nucleus of a few hundred tokens

Speed does not depend on what the weights mean, only on the shape of the distribution,
which each section prints (perplexity and nucleus sizes, from `prime` on random prompts).
The signatures are timed in turn, round after round, and each figure is the best round,
so a busy machine slows every signature alike; `x greedy` is the ratio of time per token
to greedy's in the same run and `spread` the median round over the best. The baseline
is a Python loop that calls a compiled `model.step` once per token and takes the argmax;
beam search is timed at widths 1, 4 and 8. At batch 1 a token must read every weight once
(about 10 MB); that read time, at this machine's measured memory bandwidth, is the lower
bound printed beside the batch-1 times.

Usage: python bench/generate.py [--tokens 64] [--rounds 7] [--skip-beam]
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

from pipeline.core.constants import RESERVED_TOKENS  # noqa: E402
from pipeline.core.tokenizer import TokenizerSpec, vocab_file_text  # noqa: E402
from serving.export import export_model  # noqa: E402
from serving.knobs import KNOB_SPECS  # noqa: E402
from trainer.language_model import build_language_model  # noqa: E402

VOCAB, HIDDEN = 10_000, 200
PEAK_SCALE, ZIPF = 200.0, 1.1  # the peaked distribution: output kernel x 200, bias -1.1 log(1 + id)
# (signature, knob overrides): greedy first, every ratio is against it.
CASES = [("greedy", {}), ("sample", {}), ("top_k", {"k": 40}), ("top_k", {"k": 1000}),
         ("top_p", {"p": 0.9}), ("top_p", {"p": 0.999})]


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo and the cores TensorFlow may use."""
    name = "unknown CPU"
    if os.path.exists("/proc/cpuinfo"):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return f"{name}, {os.cpu_count()} cores"


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


def make_peaked(variables) -> None:
    """Scales the output kernel and sets a Zipf prior as the output bias, in place, in any
    mapping (or list) of variables that holds the output layer's (".../output/kernel")."""
    items = variables.items() if hasattr(variables, "items") else ((v.path, v) for v in variables)
    for path, var in items:
        if path.endswith("output/kernel"):
            var.assign(var * PEAK_SCALE)
        elif path.endswith("output/bias"):
            var.assign(-ZIPF * np.log1p(np.arange(VOCAB, dtype=np.float32)))


def distribution_summary(model, rows: int = 64) -> str:
    """Mean perplexity and nucleus sizes (p = 0.9, 0.999) of next-token distributions
    after random 8-token prompts."""
    rng = np.random.default_rng(0)
    ids = tf.constant(rng.integers(len(RESERVED_TOKENS), VOCAB, size=(rows, 8)), tf.int32)
    logits, _ = model.prime(ids, tf.fill([rows], 8))
    logits = logits.numpy().astype(np.float64)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    perplexity = np.exp(-(probs * np.log(np.maximum(probs, 1e-300))).sum(1)).mean()
    mass = np.cumsum(-np.sort(-probs, axis=1), axis=1)
    sizes = [int(np.mean((mass < p).sum(1) + 1)) for p in (0.9, 0.999)]
    return f"perplexity {perplexity:,.0f}; nucleus p=0.9: {sizes[0]:,} tokens, p=0.999: {sizes[1]:,}"


def signature_inputs(fn, batch: int, tokens: int, **override) -> dict:
    specs = fn.structured_input_signature[1]
    values = {}
    for name, spec in specs.items():
        if name == "prompt":
            values[name] = tf.constant(["w1 w2 w3"] * batch)
        elif name == "seed":
            values[name] = tf.range(batch, dtype=spec.dtype)  # every row its own stream
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


def time_in_rounds(calls: dict, rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each of `calls` (name -> no-argument function), timed in turn
    for `rounds` rounds after one warm-up round."""
    times = {name: [] for name in calls}
    for r in range(rounds + 1):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            if r:
                times[name].append(time.perf_counter() - start)
    return times


def case_name(signature: str, knobs: dict) -> str:
    return signature + "".join(f" {k}={v}" for k, v in knobs.items())


def signature_table(loaded, batch: int, tokens: int, rounds: int, bound: float | None) -> None:
    """Prints every case of CASES at `batch`: ms/token, tokens/s, x greedy, spread."""
    calls = {}
    for signature, knobs in CASES:
        fn = loaded.signatures[signature]
        inputs = signature_inputs(fn, batch, tokens, **knobs)
        calls[case_name(signature, knobs)] = lambda fn=fn, inputs=inputs: {
            k: v.numpy() for k, v in fn(**inputs).items()}
    times = time_in_rounds(calls, rounds)
    greedy = min(times["greedy"])
    for name, seconds in times.items():
        per_token = min(seconds) / tokens
        print(f"{name:24s} {batch:>5d} {per_token * 1e3:>9.3f} {batch / per_token:>10,.0f} "
              f"{min(seconds) / greedy:>8.2f}x {np.median(seconds) / min(seconds):>7.2f} "
              f"{per_token / bound if bound else 0:>8.1f}")


def python_loop(model, batch: int, tokens: int, repeats: int = 3) -> float:
    # Unknown batch and length in the signatures: a trace at one static batch would not let
    # the LSTM's loop state change shape.
    state_specs = [tf.TensorSpec([None, HIDDEN], tf.float32)] * (2 * model.num_layers)
    step = tf.function(model.step, input_signature=[tf.TensorSpec([None], tf.int32), state_specs])
    prime = tf.function(model.prime, input_signature=[tf.TensorSpec([None, None], tf.int32),
                                                      tf.TensorSpec([None], tf.int32)])
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


def beam_table(loaded, tokens: int) -> None:
    fn = loaded.signatures["beam_search"]
    base = None
    for width in (1, 4, 8):
        seconds = time_call(fn, signature_inputs(fn, 1, tokens, beam_width=width), repeats=2)
        base = base or seconds
        print(f"{'beam_search width ' + str(width):24s} {1:>5d} {seconds / tokens * 1e3:>9.3f} "
              f"{tokens / seconds:>10,.0f} cost {seconds / base:.2f}x width 1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=7, help="timing rounds per signature (best one kept)")
    parser.add_argument("--skip-beam", action="store_true", help="do not time beam search and the Python loop")
    args = parser.parse_args()
    n = args.tokens
    print(f"CPU: {cpu_model()}; TensorFlow {tf.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, model = make_model_dir(tmp)
        export = export_model(model_dir, os.path.join(tmp, "export"), "lm", max_new_tokens=n)
        loaded = tf.saved_model.load(export.path)
        weight_bytes = sum(int(np.prod(w.shape)) * 4 for w in model.weights if "embedding" not in w.path)
        weight_bytes += HIDDEN * 4  # one embedding row
        bound = weight_bytes / memory_bandwidth()
        print(f"weights read per token at batch 1: {weight_bytes / 1e6:.1f} MB; "
              f"read-time bound {bound * 1e3:.2f} ms/token")
        header = (f"{'what':24s} {'batch':>5s} {'ms/token':>9s} {'tokens/s':>10s} {'x greedy':>9s} "
                  f"{'spread':>7s} {'x bound':>8s}")
        for mode in ("random", "peaked"):
            if mode == "peaked":
                make_peaked(loaded.model_variables)
                make_peaked(model.weights)
            print(f"\n[{mode}] {distribution_summary(model)}\n{header}")
            for batch in (1, 16):
                signature_table(loaded, batch, n, args.rounds, bound if batch == 1 else None)
            if mode == "random" and not args.skip_beam:
                for batch in (1, 16):
                    loop = python_loop(model, batch, n) / n
                    print(f"{'python loop (step)':24s} {batch:>5d} {loop * 1e3:>9.3f} {batch / loop:>10,.0f}")
                beam_table(loaded, n)


if __name__ == "__main__":
    main()
