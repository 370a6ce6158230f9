"""The run folder and its model folder: the trainer's output contract, read by export,
evaluation, reports and the scheduled run (which need neither the trainer nor MLflow).

    <train.output_dir>/<run key>/      run_dir_for: the key hashes the data and the settings
        checkpoints/, mlflow_run_id    the trainer's, while it runs
        model/
        model_config.json   the constructor arguments (model_config_for; build_model)
        model.weights.h5    the weights with the best valid perplexity
        metrics.json        valid/test metrics, parameter count, epochs, run id; written
                            last: a folder without it is not a finished model
        history.json, learning_curves.png
        stats.json, vocab.txt, tokenizer.json   the dataset's (dataset_files), for export

Example:
    >>> model = load_trained_model("work/train/3f9c.../model")
    >>> model_kind("work/train/3f9c.../model")
    'lm'
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil

from pipeline.core.config import PipelineConfig
from pipeline.core.constants import STATS_FILE, TOKENIZER_FILE, VOCAB_FILE
from trainer.curves import plot_learning_curves
from trainer.language_model import build_language_model
from trainer.seq2seq_model import build_seq2seq_model

MODEL_DIR = "model"
MODEL_CONFIG = "model_config.json"
WEIGHTS = "model.weights.h5"
METRICS = "metrics.json"

# The language model's keys of model.* (run keys hash these only, so older keys stay valid).
LM_MODEL_KEYS = ("cell", "embedding_dim", "hidden_dim", "num_layers", "dropout", "recurrent_dropout",
                 "tie_embeddings")
# Keys added later: a run key counts them only when they are off their default.
LATER_MODEL_KEYS = {"weight_drop": 0.0, "embedding_dropout": 0.0}
LATER_TRAIN_KEYS = {"activation_penalty": 0.0, "temporal_penalty": 0.0, "nonmono": 5, "lr_schedule": "epoch"}


def run_dir_for(config: PipelineConfig, fingerprint: str, start_from: str = "") -> str:
    """`train.output_dir/<key>`: the key covers the data, everything that changes training,
    and `start_from` (the run key of warm-start weights, if any)."""
    train = config.train.model_dump(exclude={"output_dir", "checkpoint_every", "warm_start"})
    model = config.model.model_dump()
    later = _set_later_keys(model, LATER_MODEL_KEYS)
    if config.model.kind == "lm":  # the language model's keys only: older run keys stay valid
        model = {k: model[k] for k in LM_MODEL_KEYS}
    model = {k: v for k, v in model.items() if k not in LATER_MODEL_KEYS} | later
    train = {k: v for k, v in train.items() if k not in LATER_TRAIN_KEYS} | _set_later_keys(train, LATER_TRAIN_KEYS)
    if config.train.optimizer != "nt_asgd":
        train.pop("nonmono", None)
    if config.train.distribute == "none":
        train.pop("distribute")
    body = json.dumps({"data": fingerprint, "model": model, "train": train,
                       "start_from": start_from}, sort_keys=True)
    return os.path.join(config.train.output_dir, hashlib.sha256(body.encode()).hexdigest()[:16])


def _set_later_keys(section: dict, defaults: dict) -> dict:
    return {k: section[k] for k, default in defaults.items() if section[k] != default}


def model_config_for(config: PipelineConfig, stats: dict) -> dict:
    """The constructor arguments of the model `config` describes (model_config.json)."""
    m = config.model
    common = {
        "embedding_dim": m.embedding_dim, "hidden_dim": m.hidden_dim, "num_layers": m.num_layers,
        "cell": m.cell, "dropout": m.dropout, "recurrent_dropout": m.recurrent_dropout,
        "tie_embeddings": m.tie_embeddings, "init_scale": config.train.init_scale,
        "precision": config.train.precision,
    }
    if m.kind == "lm":
        return {"vocab_size": stats["vocab_size"], **common, "weight_drop": m.weight_drop,
                "embedding_dropout": m.embedding_dropout}
    return {
        "kind": "seq2seq", **_pair_vocab_sizes(stats), **common,
        "encoder_layers": m.encoder_layers or m.num_layers, "attention": m.attention,
        "attention_score": m.attention_score, "bidirectional_encoder": m.bidirectional_encoder,
        "input_feeding": m.input_feeding,
    }


def _pair_vocab_sizes(stats: dict) -> dict:
    return {f"{side}_vocab_size": stats["vocab"][side]["size"] for side in ("source", "target")}


def build_model(model_config: dict):
    """A built LanguageModel or Seq2SeqModel from `model_config.json`'s content."""
    if model_config.get("kind", "lm") == "seq2seq":
        return build_seq2seq_model(model_config)
    return build_language_model(model_config)


def write_model_dir(model_dir: str, model, model_config: dict, metrics: dict, history: list[dict],
                    dataset_dir: str) -> None:
    """Writes the finished model folder under a temporary name, metrics.json last, then
    renames it into place (a folder without metrics.json is never taken as finished)."""
    tmp = model_dir + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    write_text(os.path.join(tmp, MODEL_CONFIG), json.dumps(model_config, indent=2) + "\n")
    model.save_weights(os.path.join(tmp, WEIGHTS))
    for name in dataset_files(dataset_dir):
        shutil.copy(os.path.join(dataset_dir, name), os.path.join(tmp, name))
    write_text(os.path.join(tmp, "history.json"), json.dumps(history, indent=2) + "\n")
    plot_learning_curves(history, os.path.join(tmp, "learning_curves.png"))
    write_text(os.path.join(tmp, METRICS), json.dumps(metrics, indent=2) + "\n")  # last: marks complete
    if os.path.exists(model_dir):  # a finish that crashed before metrics.json: never complete
        shutil.rmtree(model_dir)
    os.replace(tmp, model_dir)


def dataset_files(dataset_dir: str) -> list[str]:
    """The dataset's files a model folder carries for export: stats, and the vocabulary
    and tokenizer files (one pair, or a source and a target pair)."""
    names = [STATS_FILE]
    for prefix in ("", "source_", "target_"):
        if os.path.exists(os.path.join(dataset_dir, prefix + VOCAB_FILE)):
            names += [prefix + VOCAB_FILE, prefix + TOKENIZER_FILE]
    return names


def model_kind(model_dir: str) -> str:
    """"lm" or "seq2seq": the kind of a finished run's model folder."""
    return read_json(os.path.join(model_dir, MODEL_CONFIG)).get("kind", "lm")


def load_trained_model(model_dir: str):
    """The LanguageModel or Seq2SeqModel of a finished run's `model/` folder, weights loaded."""
    model = build_model(read_json(os.path.join(model_dir, MODEL_CONFIG)))
    model.load_weights(os.path.join(model_dir, WEIGHTS))
    return model


def read_json(path: str) -> dict:
    """The JSON object in `path` (UTF-8)."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_text(path: str, text: str) -> None:
    """Writes `text` to `path` through a temporary file and a rename (never half a file)."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
