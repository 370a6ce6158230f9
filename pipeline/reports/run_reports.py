"""Runs a report for a trained model folder: loads what it needs, writes, logs to MLflow.

Example:
    >>> run_report("decoding", config, model_dir="work/train/3f9c.../model")
    'work/train/3f9c.../reports/decoding'
"""

from __future__ import annotations

import json
import os

import numpy as np

from pipeline.core.config import PipelineConfig
from pipeline.core.constants import EOS_ID
from pipeline.core.errors import ConfigError
from pipeline.reports.report_files import log_metrics_to_run, log_to_run

REPORTS = ("gradients", "gates", "decoding", "translation")
SEQ2SEQ_REPORTS = ("translation",)


def test_prompts(tokenizer, dataset_dir: str, count: int = 16, words: int = 4) -> list[str]:
    """The first `words` tokens of the first `count` lines of the test split with enough tokens."""
    import tensorflow as tf

    from trainer.data import load_token_stream

    stream = load_token_stream(dataset_dir, "test")
    lines = np.split(stream, np.flatnonzero(stream == EOS_ID) + 1)
    starts = [line[:words] for line in lines if len(line) > words + 1][:count]
    if not starts:
        return ["the"]
    texts = tokenizer.detokenize(tf.ragged.constant([s.tolist() for s in starts], dtype=tf.int64))
    return [t.decode("utf-8", errors="replace") for t in texts.numpy()]


def run_report(name: str, config: PipelineConfig, model_dir: str, text: str | None = None) -> str:
    """Writes report `name` under `<run dir>/reports/` and logs it to the model's MLflow run."""
    from pipeline.core.tokenizer import Tokenizer
    from trainer.model_dir import load_trained_model, model_kind

    if name not in REPORTS:
        raise ValueError(f"unknown report {name!r}; choose one of {REPORTS}")
    with open(os.path.join(model_dir, "metrics.json")) as f:
        metrics = json.load(f)
    out_base = os.path.join(os.path.dirname(os.path.abspath(model_dir)), "reports")
    seq2seq = model_kind(model_dir) == "seq2seq"
    if seq2seq != (name in SEQ2SEQ_REPORTS):
        kind = "sequence-to-sequence" if seq2seq else "language"
        fits = SEQ2SEQ_REPORTS if seq2seq else tuple(r for r in REPORTS if r not in SEQ2SEQ_REPORTS)
        raise ConfigError(f"the {name} report does not fit a {kind} model; choose one of {', '.join(fits)}")
    tokenizer = None if seq2seq else Tokenizer.from_dir(model_dir)  # pairs have two: pair_tokenizers
    if name == "translation":
        from pipeline.core.pair_records import pair_tokenizers
        from pipeline.reports.translation import translation_report

        summary = translation_report(load_trained_model(model_dir), pair_tokenizers(model_dir),
                                     metrics["dataset_dir"], out_base)
        log_metrics_to_run(config.tracking.uri, metrics.get("mlflow_run_id"), {
            f"{split}_bleu_{method}": summary[split][method]["bleu"]
            for split in summary for method in ("greedy", "beam_search")})
    elif name == "gradients":
        from pipeline.reports.gradient_flow import gradient_flow_report
        from trainer.data import load_token_stream

        stream = load_token_stream(metrics["dataset_dir"], "train")
        gradient_flow_report(stream, tokenizer.vocab_size, out_base, hidden=min(config.model.hidden_dim, 64))
    elif name == "gates":
        from pipeline.reports.gates import gates_report

        text = text or " ".join(test_prompts(tokenizer, metrics["dataset_dir"], count=6, words=8))
        gates_report(load_trained_model(model_dir), tokenizer, text, out_base)
    else:
        from pipeline.reports.decoding import decoding_report

        prompts = test_prompts(tokenizer, metrics["dataset_dir"])
        decoding_report(load_trained_model(model_dir), tokenizer, prompts, out_base)
    folder = os.path.join(out_base, name)
    log_to_run(folder, config.tracking.uri, metrics.get("mlflow_run_id"), name)
    return folder
