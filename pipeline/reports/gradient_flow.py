"""Report 1: why LSTMs beat vanilla RNNs, seen in the gradients.

a) A vanilla RNN and an LSTM of the same size, trained on the same data for the same
   number of steps: the norm of dL_T/dh_t (L_T the loss at the last step of a window, h_t
   the last layer's hidden state t steps earlier), averaged over windows, against the
   distance T - t, at initialisation and after training (log scale).
b) A synthetic long-range task: the token to predict is the first token of the sequence,
   seen k steps earlier (k from 5 to 100), with blanks in between; accuracy against k for
   both cells (chance = 1 / number of symbols).

Example:
    >>> summary = gradient_flow_report(train_stream, vocab_size, "work/reports", hidden=64)
    >>> summary["long_range_accuracy"]["lstm"]["100"] > summary["long_range_accuracy"]["rnn"]["100"]
    True
"""

from __future__ import annotations

import os
import tempfile

import keras
import numpy as np
import tensorflow as tf

from pipeline.core.config import TrainConfig
from pipeline.reports.report_files import label_axes, pyplot, report_dir, save_figure, write_csv, write_json
from trainer.language_model import build_language_model
from trainer.training import Trainer

DISTANCES = (5, 10, 20, 40, 70, 100)
SYMBOLS = 10


def hidden_gradient_norms(model, windows: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """[T - 1] mean over windows of ||dL_T / dh_t|| for a [N, T] batch of windows (eager);
    index d - 1 holds distance d: the state h_t that step t + 1 reads, t = T - 1 - d."""
    ids = tf.constant(windows, tf.int32)
    states = model.initial_state(ids.shape[0])
    per_layer = model.states_per_layer
    hidden = []
    with tf.GradientTape() as tape:
        for t in range(ids.shape[1]):
            logits, states = model.step(ids[:, t], states)
            h = states[-per_layer]  # the last layer's h (first of its states)
            tape.watch(h)
            hidden.append(h)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(targets, logits))
    grads = tape.gradient(loss, hidden[:-1])  # the last state is read by no step
    norms = [tf.reduce_mean(tf.norm(g, axis=1)).numpy() if g is not None else 0.0 for g in grads]
    return np.array(norms[::-1])


def _tiny_model(cell: str, vocab: int, hidden: int, seed: int, init_scale: float = 0.1):
    keras.utils.set_random_seed(seed)
    return build_language_model({"vocab_size": vocab, "embedding_dim": hidden, "hidden_dim": hidden,
                                 "num_layers": 1, "cell": cell, "init_scale": init_scale})


def _train_lm(model, stream: np.ndarray, steps: int, batch: int = 20, bptt: int = 35) -> None:
    needed = steps * batch * bptt + 1
    stream = np.resize(stream, needed) if len(stream) < needed else stream[:needed]
    config = TrainConfig(batch_size=batch, bptt=bptt, epochs=1, optimizer="adam", learning_rate=3e-3, clip_norm=5.0)
    with tempfile.TemporaryDirectory() as tmp:
        Trainer(model, config, tmp, verbose=False).fit(stream, stream[: 50 * bptt])


def _long_range_batch(rng, k: int, batch: int):
    """A symbol, then k - 1 blanks (one token, as in Hochreiter & Schmidhuber's memory
    tasks); the target is the symbol."""
    first = rng.integers(4, 4 + SYMBOLS, size=batch)
    blanks = np.full((batch, k - 1), 4 + SYMBOLS)
    return np.concatenate([first[:, None], blanks], axis=1).astype(np.int32), first.astype(np.int32)


def long_range_accuracy(cell: str, hidden: int = 32, steps: int = 200, seed: int = 0) -> dict[str, float]:
    """{k: accuracy} of recalling the token seen k steps earlier, for k in DISTANCES.

    One model per cell learns the distances in increasing order (a curriculum: `steps`
    Adam steps at each k, then a test on 512 fresh sequences at that k)."""
    rng = np.random.default_rng(seed)
    model = _tiny_model(cell, 4 + 2 * SYMBOLS, hidden, seed, init_scale=1 / np.sqrt(hidden))
    optimizer = keras.optimizers.Adam(1e-2)

    @tf.function(reduce_retracing=True)
    def step(x, y):
        with tf.GradientTape() as tape:
            logits, _ = model(x, training=True)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits[:, -1]))
        grads = tape.gradient(loss, model.trainable_variables)
        grads, _ = tf.clip_by_global_norm(grads, 5.0)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    accuracy = {}
    for k in DISTANCES:
        for _ in range(steps):
            step(*_long_range_batch(rng, k, 64))
        x, y = _long_range_batch(rng, k, 512)
        logits, _ = model(x, training=False)
        accuracy[str(k)] = float(np.mean(np.argmax(logits[:, -1].numpy(), axis=1) == y))
    return accuracy


def gradient_flow_report(train_stream: np.ndarray, vocab_size: int, out_base: str, hidden: int = 64,
                         train_steps: int = 150, window: int = 50, task_steps: int = 200) -> dict:
    """Writes gradient_flow.{png,csv}, long_range.{png,csv} and summary.json; returns the summary."""
    folder = report_dir(out_base, "gradients")
    rng = np.random.default_rng(0)
    starts = rng.integers(0, len(train_stream) - window - 1, size=32)
    windows = np.stack([train_stream[s:s + window] for s in starts])
    targets = np.array([train_stream[s + window] for s in starts], np.int32)
    rows, curves = [], {}
    for cell in ("rnn", "lstm"):
        model = _tiny_model(cell, vocab_size, hidden, seed=1)
        for stage in ("init", "trained"):
            if stage == "trained":
                _train_lm(model, train_stream, train_steps)
            norms = hidden_gradient_norms(model, windows, targets)
            curves[(cell, stage)] = norms
            rows += [{"cell": cell, "stage": stage, "distance": d + 1, "grad_norm": float(n)}
                     for d, n in enumerate(norms)]
    write_csv(os.path.join(folder, "gradient_flow.csv"), rows)
    accuracy = {cell: long_range_accuracy(cell, steps=task_steps) for cell in ("rnn", "lstm")}
    write_csv(os.path.join(folder, "long_range.csv"),
              [{"cell": c, "k": int(k), "accuracy": a} for c, by_k in accuracy.items() for k, a in by_k.items()])
    _plot(folder, curves, accuracy)
    summary = {
        "grad_norm_ratio_far_to_near": {f"{c}_{s}": float(n[-1] / max(n[0], 1e-30)) for (c, s), n in curves.items()},
        "long_range_accuracy": accuracy, "chance": 1 / SYMBOLS, "hidden": hidden, "train_steps": train_steps,
    }
    write_json(os.path.join(folder, "summary.json"), summary)
    return summary


def _plot(folder: str, curves: dict, accuracy: dict) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    styles = {"rnn": "tab:red", "lstm": "tab:blue"}
    for (cell, stage), norms in curves.items():
        ax.semilogy(np.arange(1, len(norms) + 1), np.maximum(norms, 1e-30), color=styles[cell],
                    linestyle="--" if stage == "init" else "-", label=f"{cell} ({stage})")
    label_axes(ax, "distance T - t (steps back from the loss)", "mean ||dL_T / dh_t||",
               "Gradient flow back through time")
    save_figure(fig, os.path.join(folder, "gradient_flow.png"))
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for cell, by_k in accuracy.items():
        ax.plot([int(k) for k in by_k], list(by_k.values()), "o-", color=styles[cell], label=cell)
    ax.axhline(1 / SYMBOLS, color="gray", linestyle=":", label="chance")
    ax.set_ylim(0, 1.05)
    label_axes(ax, "k: steps between the token and its recall", "accuracy", "Long-range recall")
    save_figure(fig, os.path.join(folder, "long_range.png"))
