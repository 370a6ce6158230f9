"""The training entry point: dataset folder in, trained model folder and MLflow run out.

A training run lives in `train.output_dir/<run key>/`, the key a hash of the dataset
fingerprint and the model and training settings, so running the same config again
resumes an interrupted run from its checkpoint, or finds it finished and does nothing.
The finished model is the model folder (`trainer.model_dir`: `<run dir>/model/`).

The MLflow run records the params, per-epoch metrics, the dataset's splits as inputs,
system metrics and the model folder (artifact `model`). The model is registered when it
is exported (`serving.mlflow_model.register_export`: the registry holds the SavedModel).

Example:
    >>> result = train_model(config, "work/data/3f9c...")
    >>> result.metrics["test_ppl"], result.metrics["mlflow_run_id"]
    (118.4, '9b1d...')
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from typing import Any, Callable, NamedTuple

import keras

from pipeline.core.config import PipelineConfig
from pipeline.core.config_loader import flatten_config
from pipeline.core.constants import STATS_FILE
from pipeline.core.errors import ClusterError, InputDataError
from trainer.data import load_token_stream, num_windows
from trainer.distribute import make_strategy
from trainer.hardware import precision_warning
from trainer.model_dir import (
    METRICS, MODEL_DIR, WEIGHTS, build_model, model_config_for, read_json, run_dir_for, write_model_dir, write_text,
)
from trainer.pairs_data import load_pairs
from trainer.seq2seq_training import Seq2SeqTrainer
from trainer.tracking import MODEL_ARTIFACT, RunTracker
from trainer.training import Trainer, is_chief

_RUN_ID_FILE = "mlflow_run_id"


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What `train_model` did: the run and model folders, metrics.json's content, and
    whether a finished model was found (skipped). Example: `result.metrics["test_ppl"]` -> 118.4."""

    run_dir: str
    model_dir: str
    metrics: dict
    skipped: bool


class TrainingKind(NamedTuple):
    """What differs between training a language model and a seq2seq model: data only.

    Example:
        >>> KINDS["seq2seq"].unit, KINDS["lm"].min_train_units(20)
        ('pairs', 41)
    """

    load_split: Callable[[str, str], Any]  # (dataset_dir, split) -> the split's stream
    unit: str  # what len(stream) counts
    min_train_units: Callable[[int], int]  # the fewest train units for a global batch
    trainer_class: type
    label: Callable[[PipelineConfig], str]  # the model, in messages and run names

    def steps_per_epoch(self, train_units: int, global_batch: int, bptt: int) -> int | None:
        """Training windows per epoch (language models; seq2seq batches vary: None)."""
        return num_windows(train_units, global_batch, bptt) if self.unit == "tokens" else None


KINDS = {
    "lm": TrainingKind(load_token_stream, "tokens", lambda batch: batch * 2 + 1, Trainer, lambda config: config.model.cell),
    "seq2seq": TrainingKind(load_pairs, "pairs", lambda batch: batch, Seq2SeqTrainer, lambda config: "seq2seq"),
}


def train_model(config: PipelineConfig, dataset_dir: str, verbose: bool = True,
                warm_start_dir: str | None = None) -> TrainResult:
    """Trains (or resumes, or finds finished) the model that `config` describes: a language
    model or a seq2seq model (`model.kind`; `KINDS` holds what differs).

    Args:
        warm_start_dir: a finished model folder whose weights start this training (the
            caller checks that its vocabulary and shape match).
    """
    strategy = make_strategy(config.train.distribute)  # before TensorFlow's first op
    stats = read_json(os.path.join(dataset_dir, STATS_FILE))
    start_from = read_json(os.path.join(warm_start_dir, METRICS))["run_key"] if warm_start_dir else ""
    run_dir = run_dir_for(config, stats["fingerprint"], start_from)
    model_dir = os.path.join(run_dir, MODEL_DIR)
    if os.path.exists(os.path.join(model_dir, METRICS)):
        return TrainResult(run_dir, model_dir, read_json(os.path.join(model_dir, METRICS)), True)
    kind = KINDS[config.model.kind]
    _check_dataset_kind(config, stats, dataset_dir)
    global_batch = config.train.batch_size * strategy.num_replicas_in_sync
    streams = _load_streams(kind, dataset_dir, config, global_batch, strategy.num_replicas_in_sync)
    interval = config.tracking.system_metrics_interval_s if config.tracking.system_metrics else None
    tracker = (RunTracker(config.tracking.uri, config.tracking.experiment, interval)
               if is_chief(strategy) else None)  # only the chief tracks (and checks the server first)
    os.makedirs(run_dir, exist_ok=True)
    model_config = model_config_for(config, stats)
    keras.utils.set_random_seed(config.train.seed)  # the same config gives the same initial weights
    with strategy.scope():
        model = build_model(model_config)
    trainer = kind.trainer_class(model, config.train, run_dir, verbose=verbose, strategy=strategy)
    resumed = trainer.restore()
    if warm_start_dir and not resumed:
        model.load_weights(os.path.join(warm_start_dir, WEIGHTS))
    if not trainer.is_chief:  # a worker trains in step with the chief; the chief writes everything
        history = _fit_in_cluster(trainer, streams)
        return TrainResult(run_dir, "", {"epochs": len(history), "worker": True,
                                         "valid_ppl": history[-1]["valid_ppl"] if history else None}, False)
    run_id = _start_run(tracker, config, kind, dataset_dir, stats, run_dir, model, resumed, verbose)
    try:
        history = _fit_in_cluster(trainer, streams, lambda record: tracker.log_metrics(
            {k: v for k, v in record.items() if k not in ("epoch", "improved")}, step=record["epoch"]))
    except BaseException:
        tracker.end("KILLED")
        raise
    if os.path.exists(trainer.best_weights_path()):
        model.load_weights(trainer.best_weights_path())
    valid, test = trainer.evaluate(streams["valid"]), trainer.evaluate(streams["test"])
    metrics = {
        "valid_ppl": valid.perplexity, "test_ppl": test.perplexity, "valid_loss": valid.loss,
        "test_loss": test.loss, "test_bits_per_token": test.bits_per_token,
        "test_tokens": test.tokens, "epochs": len(history), "param_count": model.count_params(),
        "train_steps_per_epoch": kind.steps_per_epoch(len(streams["train"]), global_batch, config.train.bptt),
        "kind": config.model.kind,
        "replicas": strategy.num_replicas_in_sync, "global_batch": global_batch,
        "mlflow_run_id": run_id, "dataset_dir": dataset_dir, "fingerprint": stats["fingerprint"],
        "run_key": os.path.basename(run_dir), "warm_start_from": start_from or None,
    }
    write_model_dir(model_dir, model, model_config, metrics, history, dataset_dir)
    tracker.log_metrics({"test_ppl": test.perplexity, "test_loss": test.loss,
                         "test_bits_per_token": test.bits_per_token, "best_valid_ppl": valid.perplexity})
    tracker.log_artifacts(model_dir, MODEL_ARTIFACT)
    tracker.end()
    return TrainResult(run_dir, model_dir, metrics, False)


def _load_streams(kind: TrainingKind, dataset_dir: str, config: PipelineConfig, global_batch: int,
                  replicas: int) -> dict:
    """The train, valid and test streams; InputDataError when train cannot fill a batch."""
    streams = {s: kind.load_split(dataset_dir, s) for s in ("train", "valid", "test")}
    if len(streams["train"]) < kind.min_train_units(global_batch):
        raise InputDataError(
            f"the train split has {len(streams['train'])} {kind.unit}, too few for a global batch of "
            f"{global_batch} (train.batch_size={config.train.batch_size} x "
            f"{replicas} replicas); lower the batch size or add text")
    return streams


def _start_run(tracker: RunTracker, config: PipelineConfig, kind: TrainingKind, dataset_dir: str, stats: dict,
               run_dir: str, model, resumed: bool, verbose: bool) -> str:
    """Starts the chief's MLflow run (resumed with the run's id when training resumes):
    params, tags, the splits as datasets; prints the precision warning and the opening
    line. -> the run id."""
    run_id = _previous_run_id(run_dir) if resumed else None
    params = {**flatten_config(config), "param_count": model.count_params(), "dataset_dir": dataset_dir}
    tags = _tags(stats) | {"regularizers": regularizers_on(config)}
    run_id = tracker.start(f"{kind.label(config)}-{os.path.basename(run_dir)}", params, tags, run_id)
    tracker.log_datasets(dataset_dir, stats)
    write_text(os.path.join(run_dir, _RUN_ID_FILE), run_id)
    slow = precision_warning(config.train.precision)
    if slow:
        print(f"lmpipe: warning: {slow}", file=sys.stderr, flush=True)
    if verbose:
        what = "seq2seq model" if kind.unit == "pairs" else f"{config.model.cell} LM"
        print(f"training {what} ({model.count_params():,} parameters) in {run_dir}"
              + (" (resumed)" if resumed else "") + f"; MLflow run {run_id}", flush=True)
    return run_id


def _fit_in_cluster(trainer: Trainer, streams: dict, on_epoch_end=None) -> list[dict]:
    """trainer.fit, with a lost peer worker reported as a ClusterError (exit 5)."""
    import tensorflow as tf

    try:
        return trainer.fit(streams["train"], streams["valid"], on_epoch_end=on_epoch_end)
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.CancelledError) as e:
        if trainer.replicas == 1:
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ClusterError(
            f"a worker of the training cluster stopped ({first}); restart every worker with the same "
            f"TF_CONFIG and they resume from the chief's last checkpoint in {trainer.checkpoint_dir}") from e


def _check_dataset_kind(config: PipelineConfig, stats: dict, dataset_dir: str) -> None:
    pairs = stats.get("kind") == "pairs"
    if pairs != (KINDS[config.model.kind].unit == "pairs"):
        have = "pairs" if pairs else "a text stream"
        raise InputDataError(
            f"model.kind={config.model.kind} cannot train on {dataset_dir}, which holds {have}; use "
            + ("model.kind: seq2seq" if pairs else "data.format: pairs | pairs_tsv | pairs_jsonl with model.kind: seq2seq"))


def regularizers_on(config: PipelineConfig) -> str:
    """The regularisers a run trains with, for its MLflow tag `regularizers` ("none" if none).

    Example:
        >>> regularizers_on(PipelineConfig.model_validate({"model": {"weight_drop": 0.5}}))
        'dropout=0.3,weight_drop=0.5'
    """
    m, t = config.model, config.train
    on = {"dropout": m.dropout, "recurrent_dropout": m.recurrent_dropout, "weight_drop": m.weight_drop,
          "embedding_dropout": m.embedding_dropout, "activation_penalty": t.activation_penalty,
          "temporal_penalty": t.temporal_penalty}
    names = [f"{k}={v:g}" for k, v in on.items() if v]
    if t.optimizer == "nt_asgd":
        names.append(f"nt_asgd(nonmono={t.nonmono})")
    return ",".join(names) or "none"


def _tags(stats: dict) -> dict[str, str]:
    import apache_beam
    import keras
    import mlflow
    import tensorflow as tf
    import tensorflow_text

    return {
        "data_fingerprint": stats["fingerprint"], "git_commit": _git_commit(),
        "tensorflow": tf.__version__, "keras": keras.__version__, "mlflow": mlflow.__version__,
        "tensorflow_text": tensorflow_text.__version__, "apache_beam": apache_beam.__version__,
    }


def _git_commit() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def _previous_run_id(run_dir: str) -> str | None:
    path = os.path.join(run_dir, _RUN_ID_FILE)
    return open(path).read().strip() if os.path.exists(path) else None
