"""Report 3: how the decoders differ, measured on prompts from the test split.

Greedy, beam search (widths 1, 2, 4, 8, 16), pure sampling, top-k (5, 20, 100, 1000) and
top-p (0.5, 0.8, 0.9, 0.95), the sampling ones at several temperatures, each through the
same in-graph decoders as the export. For each: mean length, model log-probability per
token, distinct-1 / distinct-2, repetition rate (share of 3-grams that repeat an earlier
3-gram of the same text), perplexity of the generated text under the model (scored
alone), and time per token. A CSV and Markdown table, and plots of diversity against
log-probability and of length against beam width.

Example:
    >>> rows = decoding_report(model, tokenizer, prompts, "work/reports")
    >>> rows[0]["decoder"], rows[0]["mean_length"]
    ('greedy', 30.0)
"""

from __future__ import annotations

import os
import time

import numpy as np
import tensorflow as tf

from pipeline.reports.report_files import (
    label_axes, pyplot, report_dir, save_figure, write_csv, write_json, write_markdown_table)
from serving.generation_module import GenerationModule, input_specs
from serving.knobs import KNOB_SPECS

BEAM_WIDTHS = (1, 2, 4, 8, 16)
TOP_K = (5, 20, 100, 1000)
TOP_P = (0.5, 0.8, 0.9, 0.95)
TEMPERATURES = (0.7, 1.0, 1.3)


def decoder_settings() -> list[tuple[str, str, dict]]:
    """(label, signature, knobs) of every decoder configuration compared."""
    settings = [("greedy", "greedy", {})]
    settings += [(f"beam w={w}", "beam_search", {"beam_width": w}) for w in BEAM_WIDTHS]
    for temperature in TEMPERATURES:
        settings.append((f"sample T={temperature}", "sample", {"temperature": temperature}))
        settings += [(f"top_k k={k} T={temperature}", "top_k", {"k": k, "temperature": temperature}) for k in TOP_K]
        settings += [(f"top_p p={p} T={temperature}", "top_p", {"p": p, "temperature": temperature}) for p in TOP_P]
    return settings


def ngram_stats(token_lists: list[list[int]]) -> dict[str, float]:
    """distinct-1, distinct-2 (over all texts) and the 3-gram repetition rate.

    >>> ngram_stats([[1, 2, 3, 1, 2, 3], [4, 5]])
    {'distinct_1': 0.625, 'distinct_2': 0.6666666666666666, 'repetition_rate': 0.25}
    """
    def grams(tokens, n):
        return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]

    uni = [g for t in token_lists for g in grams(t, 1)]
    bi = [g for t in token_lists for g in grams(t, 2)]
    repeated = total = 0
    for tokens in token_lists:
        seen = set()
        for gram in grams(tokens, 3):
            total += 1
            repeated += gram in seen
            seen.add(gram)
    return {"distinct_1": len(set(uni)) / max(len(uni), 1), "distinct_2": len(set(bi)) / max(len(bi), 1),
            "repetition_rate": repeated / max(total, 1)}


def decoding_report(model, tokenizer, prompts: list[str], out_base: str, max_new_tokens: int = 30,
                    seed: int = 0) -> list[dict]:
    """Writes decoding.csv, decoding.md, diversity_vs_logprob.png, length_vs_beam.png."""
    folder = report_dir(out_base, "decoding")
    module = GenerationModule(model, tokenizer, max_new_tokens=max_new_tokens)
    functions = {}
    score = module.score_function()
    rows = []
    batch = len(prompts)
    for label, signature, knobs in decoder_settings():
        if signature not in functions:
            functions[signature] = module.generation_function(signature).get_concrete_function(
                **input_specs(signature))
        fn = functions[signature]
        inputs = {"prompt": tf.constant(prompts)}
        for name, spec in input_specs(signature).items():
            if name != "prompt":
                default = {"max_new_tokens": max_new_tokens, "seed": seed}.get(name, knobs.get(name))
                value = default if default is not None else KNOB_SPECS[name][1]
                inputs[name] = tf.fill([batch], tf.cast(value, spec.dtype))
        started = time.perf_counter()
        out = fn(**inputs)
        seconds = time.perf_counter() - started
        ids, lengths, log_prob = out["token_ids"].numpy(), out["lengths"].numpy(), out["log_prob"].numpy()
        if ids.ndim == 3:  # beam search: the best hypothesis
            ids, lengths, log_prob = ids[:, 0], lengths[:, 0], log_prob[:, 0]
        tokens = [row[:n].tolist() for row, n in zip(ids, lengths)]
        flat = tf.constant([t for row in tokens for t in row], tf.int64)
        texts = tokenizer.detokenize(tf.RaggedTensor.from_row_lengths(flat, tf.constant(lengths, tf.int64)))
        scored = score(text=texts)
        total_tokens = max(int(lengths.sum()), 1)
        rows.append({
            "decoder": label, "mean_length": float(lengths.mean()),
            "logprob_per_token": float(log_prob.sum() / total_tokens),
            **ngram_stats(tokens),
            "generated_ppl": float(np.exp(-scored["log_prob"].numpy().sum() / max(int(scored["tokens"].numpy().sum()), 1))),
            "ms_per_token": 1000 * seconds / total_tokens,
            "example": texts.numpy()[0].decode("utf-8", errors="replace")[:80],
        })
    write_csv(os.path.join(folder, "decoding.csv"), rows)
    write_markdown_table(os.path.join(folder, "decoding.md"), rows)
    write_json(os.path.join(folder, "summary.json"), {"prompts": prompts, "max_new_tokens": max_new_tokens})
    _plot(folder, rows)
    return rows


def _plot(folder: str, rows: list[dict]) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(7, 5), dpi=100)
    families = {"greedy": "black", "beam": "tab:blue", "sample": "tab:red", "top_k": "tab:green", "top_p": "tab:purple"}
    for row in rows:
        family = row["decoder"].split()[0]
        ax.scatter(row["logprob_per_token"], row["distinct_2"], color=families[family], s=25)
        ax.annotate(row["decoder"].replace(f"{family} ", ""), (row["logprob_per_token"], row["distinct_2"]),
                    fontsize=5, alpha=0.7)
    for family, color in families.items():
        ax.scatter([], [], color=color, label=family)
    label_axes(ax, "model log-probability per token (higher: more probable text)",
               "distinct-2 (higher: more diverse)", "Diversity against probability")
    save_figure(fig, os.path.join(folder, "diversity_vs_logprob.png"))
    beams = [r for r in rows if r["decoder"].startswith("beam")]
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
    ax.plot(list(BEAM_WIDTHS), [r["mean_length"] for r in beams], "o-")
    ax.set_xscale("log", base=2)
    label_axes(ax, "beam width", "mean generated length (tokens)", "Larger beams, shorter texts", legend=False)
    save_figure(fig, os.path.join(folder, "length_vs_beam.png"))
