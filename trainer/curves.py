"""The learning-curve PNG: train and valid perplexity (and learning rate) per epoch."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_learning_curves(history: list[dict], path: str) -> None:
    """Writes a PNG of perplexity against tokens seen, log scale, with the LR on a twin axis."""
    tokens = [h["tokens_seen"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(tokens, [h["train_ppl"] for h in history], "o-", label="train")
    ax.plot(tokens, [h["valid_ppl"] for h in history], "s-", label="valid")
    ax.set_yscale("log")
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("perplexity")
    lr_ax = ax.twinx()
    lr_ax.plot(tokens, [h["learning_rate"] for h in history], ":", color="gray", label="learning rate")
    lr_ax.set_ylabel("learning rate")
    ax.legend(loc="upper right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
