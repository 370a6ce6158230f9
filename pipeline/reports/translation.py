"""Report 4 (sequence-to-sequence models): BLEU and attention.

Tokenized BLEU (sacrebleu, with its signature string) of greedy and beam-search decodes
on the valid and test pairs, the teacher-forced perplexity beside it, sample
translations, and attention heatmaps (output tokens x source tokens) of the first test
sentences, from the greedy decodes.

Example:
    >>> summary = translation_report(model, tokenizers, dataset_dir, "work/train/3f9c.../reports")
    >>> summary["test"]["greedy"]["bleu"]
    31.2
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from pipeline.core.constants import BOS_ID
from pipeline.reports.report_files import pyplot, report_dir, save_figure, write_csv, write_json

METHODS = ("greedy", "beam_search")


def translation_report(model, tokenizers: dict, dataset_dir: str, out_base: str, beam_width: int = 5,
                       heatmaps: int = 4, samples: int = 20, splits=("valid", "test")) -> dict:
    """Writes bleu.json, samples.csv and attention_<i>.png; returns the bleu.json content."""
    from serving.translation_eval import corpus_bleu, detokenize, source_texts
    from trainer.pairs_data import load_pairs
    from trainer.seq2seq_training import evaluate_pairs

    folder = report_dir(out_base, "translation")
    summary, sample_rows = {}, []
    for split in splits:
        pairs = load_pairs(dataset_dir, split)
        if not len(pairs):
            continue
        perplexity = evaluate_pairs(model, pairs).perplexity
        summary[split] = {"pairs": len(pairs), "perplexity": perplexity}
        results = {}
        for method in METHODS:
            result = corpus_bleu(model, tokenizers, pairs, method, beam_width=beam_width)
            results[method] = result
            summary[split][method] = {"bleu": result.score, "signature": result.signature, "detail": result.detail}
        if split == "test":
            sources = source_texts(tokenizers["source"], pairs)
            for i in range(min(samples, len(pairs))):
                sample_rows.append({"source": sources[i], "reference": results["greedy"].references[i],
                                    "greedy": results["greedy"].hypotheses[i],
                                    "beam_search": results["beam_search"].hypotheses[i]})
            chosen = [pairs.source(i) for i in range(min(heatmaps, len(pairs)))]
            for i, (source, output) in enumerate(zip(chosen, results["greedy"].outputs)):
                weights = attention_weights(model, source, output)
                _plot(os.path.join(folder, f"attention_{i}.png"), weights,
                      _tokens(tokenizers["source"], source), _tokens(tokenizers["target"], output) + ["<eos>"],
                      detokenize(tokenizers["target"], [output])[0])
    write_json(os.path.join(folder, "bleu.json"), summary)
    if sample_rows:
        write_csv(os.path.join(folder, "samples.csv"), sample_rows)
    return summary


def attention_weights(model, source: np.ndarray, output: np.ndarray) -> np.ndarray:
    """[len(output) + 1, len(source)]: the attention with which each output token (and the
    final <eos>) was chosen, teacher-forced on the output."""
    target_in = np.concatenate([[BOS_ID], output]).astype(np.int32)
    _, weights = model(tf.constant(source[None, :], tf.int32), tf.constant(target_in[None, :]), return_attention=True)
    return weights.numpy()[0]


def _tokens(tokenizer, ids) -> list[str]:
    return [t.decode("utf-8", errors="replace") for t in tokenizer.id_to_token.lookup(tf.constant(ids, tf.int64)).numpy()]


def _plot(path: str, weights: np.ndarray, source_tokens: list[str], output_tokens: list[str], title: str) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(4, 0.45 * len(source_tokens) + 2), max(3, 0.4 * len(output_tokens) + 1.5)))
    ax.imshow(weights, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(source_tokens)), source_tokens, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(output_tokens)), output_tokens, fontsize=8)
    ax.set_xlabel("source")
    ax.set_ylabel("output (greedy)")
    ax.set_title(title[:80], fontsize=9)
    save_figure(fig, path, dpi=110)
