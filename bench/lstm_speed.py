"""Training speed of our LSTM against keras.layers.LSTM in the same language model.

For the Zaremba small (2x200) and medium (2x650) shapes (vocab 10k, bptt 35, batch 20), a
full training step (forward, backward, clipping, SGD update, 10k-way softmax) is timed for:
  keras     the LanguageModel with keras.layers.LSTM in place of ours (the baseline)
  ours      our LSTM layer, float32
  ours-bf16 our LSTM layer with train.precision=mixed_bfloat16
  torch     PyTorch's nn.LSTM (oneDNN on CPU) in the same model and step: embedding, 2-layer
            LSTM, 10k linear + cross-entropy (summed over the window, averaged over the
            batch), backward, clip_grad_norm_ 5, SGD; when torch is installed (`pip install
            torch`: a peer for this bench only, never a dependency of lmpipe), in a child
            process (bench/torch_lstm_peer.py: torch and TensorFlow in one process crash)
and the tokens/s of each, its ratio to the baseline of the same run, and the fraction of
this machine's matmul rate (measured here, 2048^3, float32 and bfloat16) that it reaches;
the floor (the step's matmul FLOPs at that rate) is printed per shape. Also the recurrent
layer alone (forward + backward of one layer, [20, 35, H] in, the rest of the model left
out) and the latency of one `step` (one token) at batch 1.

The CPU's model and its bfloat16 flags (avx512_bf16, amx_bf16) are printed first: the
figures differ from machine to machine.

Usage: python bench/lstm_speed.py [--shapes small medium] [--steps 20] [--kinds keras ours torch]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from pipeline.core.config import TrainConfig  # noqa: E402
from trainer.language_model import LanguageModel  # noqa: E402
from trainer.training import Trainer  # noqa: E402

SHAPES = {"small": 200, "medium": 650}
VOCAB, BPTT, BATCH = 10_000, 35, 20


class KerasLSTM(keras.layers.Layer):
    """keras.layers.LSTM behind our layers' call signature (the baseline)."""

    def __init__(self, units, **kwargs):
        kwargs.pop("recurrent_dropout", None)
        init = kwargs.pop("kernel_initializer")
        kwargs.pop("recurrent_initializer")
        super().__init__(name=kwargs.pop("name"), dtype=kwargs.pop("dtype"))
        self.units = units
        self.inner = keras.layers.LSTM(units, return_sequences=True, return_state=True,
                                       kernel_initializer=init, recurrent_initializer=init, dtype=self.dtype_policy)

    def build(self, input_shape):
        self.inner.build(input_shape)

    def step(self, x, states):
        h, new_states = self.inner.cell(x, states, training=False)
        return h, list(new_states)

    def call(self, x, initial_state=None, training=False, seed=None, mask=None):
        out, h, c = self.inner(x, initial_state=initial_state, training=training, mask=mask)
        return out, [h, c]


def build(hidden: int, kind: str) -> LanguageModel:
    precision = "mixed_bfloat16" if kind == "ours-bf16" else "float32"
    model = LanguageModel(VOCAB, hidden, hidden, num_layers=2, precision=precision)
    if kind == "keras":
        init = keras.initializers.RandomUniform(-0.1, 0.1)
        model.recurrent = [KerasLSTM(hidden, kernel_initializer=init, recurrent_initializer=init,
                                     name=f"keras_lstm_{i}", dtype="float32") for i in range(2)]
    model.build()
    return model


def matmul_rate(dtype) -> float:
    a = tf.random.normal([2048, 2048], dtype=tf.float32)
    a = tf.cast(a, dtype)
    f = tf.function(lambda a: tf.matmul(a, a))
    f(a).numpy()
    start = time.perf_counter()
    for _ in range(5):
        f(a).numpy()
    return 2 * 2048 ** 3 * 5 / (time.perf_counter() - start)


def cpu_description() -> str:
    """The CPU's model name and which bfloat16 instructions it has (from /proc/cpuinfo)."""
    try:
        info = open("/proc/cpuinfo").read()
    except OSError:
        return "unknown CPU"
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                 "unknown CPU")
    flags = next((set(line.split(":", 1)[1].split()) for line in info.splitlines() if line.startswith("flags")), set())
    bf16 = [f for f in ("avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    return f"{model}, {os.cpu_count()} cores, bfloat16: {', '.join(bf16) or 'none (emulated)'}"


def torch_training_rate(hidden: int, steps: int) -> tuple[float, str]:
    """Training tokens/s of the same model and step in PyTorch (nn.LSTM), measured by
    bench/torch_lstm_peer.py in a process of its own; -> (tokens/s, torch's version)."""
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_lstm_peer.py"),
                          "--hidden", str(hidden), "--steps", str(steps), "--vocab", str(VOCAB),
                          "--batch", str(BATCH), "--bptt", str(BPTT)], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["tokens_per_s"], f"{result['torch']} (oneDNN {result['mkldnn']})"


def torch_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def train_flops_per_token(hidden: int) -> float:
    """Forward FLOPs x 3 (backward is twice the forward): 2 LSTM layers and the softmax."""
    lstm = 2 * 2 * (hidden * 4 * hidden + hidden * 4 * hidden)
    softmax = 2 * hidden * VOCAB
    return 3 * (lstm + softmax)


def time_training(model, steps: int, tmp: str, batch: int = BATCH, strategy=None) -> float:
    """Training tokens/s (global batch) of `steps` compiled steps after 3 warm-up ones."""
    trainer = Trainer(model, TrainConfig(batch_size=batch, bptt=BPTT), tmp, verbose=False, strategy=strategy)
    rows = trainer.global_batch
    rng = np.random.default_rng(0)
    x = tf.constant(rng.integers(0, VOCAB, (rows, BPTT)), tf.int32)
    states = model.initial_state(rows)
    seed = tf.constant([0, 0], tf.int32)
    for _ in range(3):
        trainer._train_step(x, x, states, seed)[0].numpy()
    start = time.perf_counter()
    for _ in range(steps):
        nll, _, states = trainer._train_step(x, x, states, seed)
    nll.numpy()
    return rows * BPTT * steps / (time.perf_counter() - start)


def layer_time(layer, hidden: int, repeats: int = 20) -> float:
    """Seconds for forward + backward of one recurrent layer on x [BATCH, BPTT, hidden]."""
    x = tf.random.stateless_normal([BATCH, BPTT, hidden], seed=[0, 1])

    @tf.function
    def forward_backward(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            outputs, _ = layer(x, training=True)
            loss = tf.reduce_sum(tf.cast(outputs, tf.float32))
        return tape.gradient(loss, [x, *layer.trainable_variables])

    for _ in range(3):
        forward_backward(x)[0].numpy()
    start = time.perf_counter()
    for _ in range(repeats):
        grads = forward_backward(x)
    grads[0].numpy()
    return (time.perf_counter() - start) / repeats


def step_latency(model, calls: int = 200) -> float:
    step = tf.function(model.step)
    ids = tf.constant([5], tf.int32)
    states = model.initial_state(1)
    for _ in range(5):
        logits, states = step(ids, states)
    start = time.perf_counter()
    for _ in range(calls):
        logits, states = step(ids, states)
    logits.numpy()
    return (time.perf_counter() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--kinds", nargs="+", default=["keras", "ours", "ours-bf16", "torch"],
                        choices=["keras", "ours", "ours-bf16", "torch"])
    args = parser.parse_args()
    import tempfile

    print(f"CPU: {cpu_description()}")
    if "torch" in args.kinds and not torch_available():
        print("torch: not installed, its row is skipped (pip install torch to measure the peer)")
        args.kinds = [k for k in args.kinds if k != "torch"]

    peak = {"float32": matmul_rate(tf.float32), "bfloat16": matmul_rate(tf.bfloat16)}
    print(f"matmul 2048^3 on this machine: float32 {peak['float32'] / 1e9:,.0f} GFLOP/s, "
          f"bfloat16 {peak['bfloat16'] / 1e9:,.0f} GFLOP/s")
    print(f"{'shape':7s} {'layer':10s} {'train tok/s':>12s} {'vs keras':>9s} {'GFLOP/s':>8s} "
          f"{'of peak':>8s} {'layer ms':>9s} {'vs keras':>9s} {'step@B=1':>10s}")
    for shape in args.shapes:
        hidden = SHAPES[shape]
        floor = train_flops_per_token(hidden) * BATCH * BPTT / peak["float32"]
        print(f"{shape}: floor {floor * 1e3:.0f} ms/step = {BATCH * BPTT / floor:,.0f} tok/s "
              f"(matmul FLOPs of the step at the float32 rate)")
        base = base_layer = None
        rates = {}
        for kind in args.kinds:
            if kind == "torch":
                rate, version = torch_training_rate(hidden, args.steps)
                rates[kind] = rate
                ratio = f"{rate / base:.2f}x" if base else "-"
                print(f"{shape:7s} {kind:10s} {rate:>12,.0f} {ratio:>9s} {rate * train_flops_per_token(hidden) / 1e9:>8.0f} "
                      f"{rate * train_flops_per_token(hidden) / peak['float32']:>8.1%}   torch {version}", flush=True)
                continue
            keras.utils.set_random_seed(0)
            model = build(hidden, kind)
            with tempfile.TemporaryDirectory() as tmp:
                rate = time_training(model, args.steps, tmp)
            layer = layer_time(model.recurrent[1], hidden)
            latency = step_latency(model)
            rates[kind] = rate
            base = rate if kind == "keras" else base
            base_layer = layer if kind == "keras" else base_layer
            flops = rate * train_flops_per_token(hidden)
            dtype = "bfloat16" if kind == "ours-bf16" else "float32"
            ratio = f"{rate / base:.2f}x" if base else "-"
            layer_ratio = f"{base_layer / layer:.2f}x" if base_layer else "-"
            print(f"{shape:7s} {kind:10s} {rate:>12,.0f} {ratio:>9s} {flops / 1e9:>8.0f} "
                  f"{flops / peak[dtype]:>8.1%} {layer * 1e3:>9.1f} {layer_ratio:>9s} "
                  f"{latency * 1e3:>8.2f}ms", flush=True)
        if "torch" in rates and "ours" in rates:
            print(f"{shape}: ours float32 / PyTorch nn.LSTM = {rates['ours'] / rates['torch']:.2f}x", flush=True)


if __name__ == "__main__":
    main()
