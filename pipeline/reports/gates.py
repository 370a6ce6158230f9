"""Report 2: what the LSTM gates do on a given text.

For each LSTM layer of a trained model: heatmaps over time of the forget, input and output
gates and the cell state of chosen units, the distribution of each gate, and the share of
saturated gate values (below 0.1 or above 0.9).

Example:
    >>> summary = gates_report(model, tokenizer, "The for statement is used to ...", "work/reports")
    >>> summary["saturation"]["layer_0"]["forget"]
    0.42
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from pipeline.core.constants import EOS_ID
from pipeline.reports.report_files import pyplot, report_dir, save_figure, write_csv, write_json
from trainer.layers.lstm import LSTM

GATES = ("forget", "input", "output")


def gate_traces(model, ids: np.ndarray) -> list[dict[str, np.ndarray]]:
    """Per LSTM layer: {gate or "cell": [T, H]} for one token sequence (no dropout)."""
    if not all(isinstance(layer, LSTM) for layer in model.recurrent):
        raise ValueError("the gates report needs an LSTM model (model.cell: lstm)")
    x = model.embedding(tf.constant(ids[None, :], tf.int32))
    traces = []
    for layer in model.recurrent:
        trace = layer.trace(x)
        traces.append({k: v.numpy()[0] for k, v in trace.items()})
        x = trace["hidden"]
    return traces


def gates_report(model, tokenizer, text: str, out_base: str, units: int = 16) -> dict:
    """Writes gates_layer<i>.png, gate_distributions.png, saturation.csv, summary.json."""
    folder = report_dir(out_base, "gates")
    ids = np.concatenate([[EOS_ID], tokenizer.tokenize(tf.constant([text])).to_list()[0]]).astype(np.int32)
    tokens = [t.decode() for t in tokenizer.id_to_token.lookup(tf.constant(ids, tf.int64)).numpy()]
    traces = gate_traces(model, ids)
    rows, saturation = [], {}
    for index, trace in enumerate(traces):
        saturation[f"layer_{index}"] = {}
        for gate in GATES:
            values = trace[gate]
            share = float(np.mean((values < 0.1) | (values > 0.9)))
            saturation[f"layer_{index}"][gate] = share
            rows.append({"layer": index, "gate": gate, "mean": float(values.mean()), "saturated_share": share,
                         "below_0.1": float(np.mean(values < 0.1)), "above_0.9": float(np.mean(values > 0.9))})
    write_csv(os.path.join(folder, "saturation.csv"), rows)
    chosen = _chosen_units(traces, units)
    _plot_heatmaps(folder, traces, tokens, chosen)
    _plot_distributions(folder, traces)
    summary = {"tokens": len(ids), "units_shown": {f"layer_{i}": c.tolist() for i, c in enumerate(chosen)},
               "saturation": saturation}
    write_json(os.path.join(folder, "summary.json"), summary)
    return summary


def _chosen_units(traces, units: int) -> list[np.ndarray]:
    """The units whose cell state varies most over the text, per layer."""
    return [np.sort(np.argsort(-trace["cell"].std(axis=0))[:units]) for trace in traces]


def _plot_heatmaps(folder, traces, tokens, chosen) -> None:
    plt = pyplot()

    for index, (trace, units) in enumerate(zip(traces, chosen)):
        fig, axes = plt.subplots(4, 1, figsize=(max(6, len(tokens) * 0.25), 9), dpi=100, sharex=True)
        for ax, name in zip(axes, (*GATES, "cell")):
            data = trace[name][:, units].T
            limits = (0, 1) if name != "cell" else (-np.abs(data).max(), np.abs(data).max())
            image = ax.imshow(data, aspect="auto", cmap="viridis" if name != "cell" else "RdBu_r",
                              vmin=limits[0], vmax=limits[1], interpolation="nearest")
            ax.set_ylabel(f"{name}\nunit")
            ax.set_yticks(range(len(units)), [str(u) for u in units], fontsize=5)
            fig.colorbar(image, ax=ax, fraction=0.02)
        if len(tokens) <= 80:
            axes[-1].set_xticks(range(len(tokens)), tokens, rotation=90, fontsize=6)
        fig.suptitle(f"LSTM layer {index}: gates and cell state over the text")
        save_figure(fig, os.path.join(folder, f"gates_layer{index}.png"))


def _plot_distributions(folder, traces) -> None:
    plt = pyplot()

    fig, axes = plt.subplots(1, len(traces), figsize=(5 * len(traces), 3.5), dpi=100, squeeze=False)
    for index, trace in enumerate(traces):
        ax = axes[0][index]
        for gate in GATES:
            ax.hist(trace[gate].ravel(), bins=40, range=(0, 1), histtype="step", label=gate, density=True)
        ax.axvspan(0, 0.1, color="gray", alpha=0.15)
        ax.axvspan(0.9, 1, color="gray", alpha=0.15)
        ax.set_title(f"layer {index}: gate values (shaded: saturated)")
        ax.set_xlabel("activation")
        ax.legend()
    save_figure(fig, os.path.join(folder, "gate_distributions.png"))
