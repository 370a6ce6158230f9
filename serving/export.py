"""Writes a trained model as a new integer version of a TF-Serving-ready SavedModel.

    <base_path>/<model_name>/<version>/
        saved_model.pb, variables/          signatures of GenerationModule
        assets/vocab.txt                    the tokenizer's vocabulary (a SavedModel asset;
                                            seq2seq: source_ and target_vocab.txt, or one)
        assets.extra/tf_serving_warmup_requests   one PredictionLog per signature
        assets.extra/lmpipe_export.json     versions (tensorflow, tensorflow-text), metrics

The version is one higher than the highest there; the folder is written under a hidden
temporary name and renamed into place, so TF Serving (which watches the folder) never
sees half a model. Export refuses to run without a finished training run.

Example:
    >>> export_model("work/train/3f9c.../model", "work/export", "lm", default_signature="top_p")
    ExportResult(path='work/export/lm/3', version=3)
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
import uuid

import tensorflow as tf

from pipeline.core.errors import InputDataError
from pipeline.core.pair_records import pair_tokenizers
from pipeline.core.tokenizer import Tokenizer
from serving.generation_module import DEFAULT_MAX_PROMPT_TOKENS, GenerationModule
from serving.seq2seq_module import Seq2SeqGenerationModule
from serving.warmup import WARMUP_FILE, write_warmup_requests

EXPORT_META = "lmpipe_export.json"


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """A written version: its folder and number, e.g. ExportResult(path="work/export/lm/3", version=3)."""

    path: str
    version: int


def existing_versions(model_base: str) -> list[int]:
    """Integer versions under `<base_path>/<model_name>`, ascending."""
    if not os.path.isdir(model_base):
        return []
    return sorted(int(n) for n in os.listdir(model_base) if n.isdigit())


def export_model(model_dir: str, base_path: str, model_name: str, default_signature: str = "top_p",
                 max_new_tokens: int = 256, max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS,
                 allow_unk: bool = False) -> ExportResult:
    """Exports the finished training run in `model_dir` (see trainer.model_dir); the
    limits and `allow_unk` are those of `GenerationModule`."""
    from trainer.model_dir import METRICS, load_trained_model, model_kind  # the trainer's output contract

    if not os.path.exists(os.path.join(model_dir, METRICS)):
        raise InputDataError(
            f"no finished training run in {model_dir} (metrics.json missing); run lmpipe train first")
    model = load_trained_model(model_dir)
    if model_kind(model_dir) == "seq2seq":
        module = Seq2SeqGenerationModule(model, pair_tokenizers(model_dir), max_new_tokens, max_prompt_tokens, allow_unk)
    else:
        module = GenerationModule(model, Tokenizer.from_dir(model_dir), max_new_tokens, max_prompt_tokens, allow_unk)
    signatures = module.signatures()
    signatures["serving_default"] = signatures[default_signature]
    model_base = os.path.join(base_path, model_name)
    os.makedirs(model_base, exist_ok=True)
    tmp = os.path.join(model_base, f".tmp-{uuid.uuid4().hex[:12]}")
    try:
        tf.saved_model.save(module, tmp, signatures=signatures)
        write_warmup_requests(os.path.join(tmp, "assets.extra", WARMUP_FILE), model_name, signatures)
        _write_meta(tmp, model_dir, list(signatures), default_signature=default_signature,
                    max_new_tokens=max_new_tokens, max_prompt_tokens=max_prompt_tokens, allow_unk=allow_unk)
        return _publish(tmp, model_base)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_meta(folder, model_dir, signatures, **options) -> None:
    import tensorflow_text

    with open(os.path.join(model_dir, "metrics.json")) as f:
        metrics = json.load(f)
    meta = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "tensorflow": tf.__version__,
        "tensorflow_text": tensorflow_text.__version__,
        "signatures": signatures,
        "kind": metrics.get("kind", "lm"),
        **options,
        "source_model_dir": os.path.abspath(model_dir),
        "metrics": metrics,
    }
    with open(os.path.join(folder, "assets.extra", EXPORT_META), "w") as f:
        json.dump(meta, f, indent=2)


def publish_copy(saved_model: str, model_base: str) -> ExportResult:
    """Copies a SavedModel folder (e.g. a registered version's) in as the next version,
    through a hidden temporary folder like `export_model`."""
    if not os.path.exists(os.path.join(saved_model, "saved_model.pb")):
        raise InputDataError(f"{saved_model} holds no saved_model.pb; it is not a SavedModel")
    os.makedirs(model_base, exist_ok=True)
    tmp = os.path.join(model_base, f".tmp-{uuid.uuid4().hex[:12]}")
    try:
        shutil.copytree(saved_model, tmp)
        return _publish(tmp, model_base)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_export_meta(version_dir: str) -> dict:
    """A version's `assets.extra/lmpipe_export.json` ({} for a folder without one)."""
    path = os.path.join(version_dir, "assets.extra", EXPORT_META)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def prompt_input(meta: dict) -> str:
    """The generation signatures' strings input of an export: "source" (seq2seq) or "prompt"."""
    return "source" if meta.get("kind") == "seq2seq" else "prompt"


def find_export_of(model_base: str, model_dir: str) -> ExportResult | None:
    """The version under `model_base` exported from `model_dir`, if any (an interrupted run's)."""
    for version in existing_versions(model_base):
        path = os.path.join(model_base, str(version))
        if read_export_meta(path).get("source_model_dir") == os.path.abspath(model_dir):
            return ExportResult(path, version)
    return None


def _publish(tmp: str, model_base: str) -> ExportResult:
    """Renames `tmp` to the next free version; retries if a concurrent export took it."""
    for _ in range(100):
        version = (existing_versions(model_base) or [0])[-1] + 1
        target = os.path.join(model_base, str(version))
        try:
            os.rename(tmp, target)  # fails if `target` appeared meanwhile
            return ExportResult(target, version)
        except OSError:
            if not os.path.exists(target):
                raise
    raise RuntimeError(f"could not find a free version number under {model_base}")
