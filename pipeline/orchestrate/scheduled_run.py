"""`lmpipe run`: every stage in order, safe to start from cron, systemd or Airflow.

preprocess -> train -> report -> evaluate -> export -> promote, under one lock. Each stage is
idempotent (a dataset, training run or export that exists is found and reused), so a run
killed anywhere continues where it stopped when started again. A new model becomes the
registry `champion` (and TF Serving's `stable` label) only if its test perplexity (a
sequence-to-sequence model: its greedy test BLEU) beats the champion's, both measured on
the same test data, by `promote.min_improvement`, and its export passes the clean-process
serving check; otherwise it is the `challenger`.

Exit codes: 0 promoted or nothing new; 10 not better (or failed the serving check);
11 locked by another run; 1 failure (2 config, 3 input data, 4 tracking errors).

Example:
    >>> manifest = run_pipeline(load_config("pipeline_config.yaml"))
    >>> manifest["decision"], manifest["exit_code"]
    ('promoted', 0)
"""

from __future__ import annotations

import json
import os
import time
import uuid
from typing import Callable

from pipeline.core.config import PipelineConfig
from pipeline.core.constants import STATS_FILE, UNK_ID, VOCAB_FILE
from pipeline.core.tokenizer import read_vocab
from pipeline.orchestrate.run_lock import RunLock
from pipeline.preprocess.run import run_preprocess

EXIT_NOT_BETTER = 10
STAGES = ("preprocess", "train", "report", "evaluate", "export", "promote")


class _Stages:
    """Times each stage into the manifest and prints one line per stage."""

    def __init__(self, manifest: dict, verbose: bool, until: str | None = None) -> None:
        self.manifest = manifest
        self.verbose = verbose
        self.until = until

    def run(self, name: str, fn: Callable[[], dict]) -> dict:
        if self.manifest.get("decision") is not None:
            raise _Stop
        started = time.perf_counter()
        record = {"stage": name}
        self.manifest["stages"].append(record)
        result = fn()
        record.update(result, seconds=round(time.perf_counter() - started, 2))
        if self.verbose:
            details = ", ".join(f"{k}={v}" for k, v in result.items() if not isinstance(v, (dict, list)))
            print(f"[{name}] {details} ({record['seconds']} s)", flush=True)
        if name == self.until:
            self.manifest.update(decision=f"stopped_after_{name}", exit_code=0, reason=f"asked to stop after {name}")
        return result


class _Stop(Exception):
    """Raised by the stage after `until`: the run ends there."""


def run_pipeline(config: PipelineConfig, beam_args: list[str] | None = None, verbose: bool = True,
                 until: str | None = None) -> dict:
    """Runs every stage (or the stages up to `until`) under the run lock; returns the
    manifest, also written to `<run.work_dir>/manifests/`. Finished stages are skipped,
    so `until="export"` after `until="train"` only does the new work (Airflow tasks)."""
    if until is not None and until not in STAGES:
        raise ValueError(f"until must be one of {STAGES}, got {until!r}")
    with RunLock(config.run.work_dir) as lock:
        manifest = {
            "id": time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6],
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "pid": os.getpid(), "stale_lock_taken_from": lock.previous_pid, "stages": [],
        }
        try:
            _run_stages(config, beam_args, manifest, _Stages(manifest, verbose, until))
        except _Stop:
            pass
        except BaseException as err:
            manifest.update(decision="failed", exit_code=1, reason=f"{type(err).__name__}: {err}")
            _write_manifest(config, manifest)
            raise
        _write_manifest(config, manifest)
        return manifest


def _run_stages(config: PipelineConfig, beam_args, manifest: dict, stages: _Stages) -> None:
    from trainer.registry import ModelRegistry
    from trainer.model_dir import run_dir_for

    dataset = stages.run("preprocess", lambda: _preprocess(config, beam_args))
    manifest.update(dataset_dir=dataset["dataset_dir"], fingerprint=dataset["fingerprint"])
    registry = ModelRegistry(config.tracking.uri, config.tracking.registered_model)
    champion = registry.version_with_alias("champion")
    champion_dir = registry.local_copy(champion) if champion is not None else None
    if champion is not None and not registry.is_mlflow_model(champion):
        manifest["champion_note"] = _old_version_note(config, champion)
    warm_dir, warm_note = _warm_start(config, dataset["dataset_dir"], champion_dir)
    start_from = champion.tags.get("run_key", "") if warm_dir else ""
    run_key = os.path.basename(run_dir_for(config, dataset["fingerprint"], start_from))
    manifest.update(run_key=run_key, champion_before=champion.version if champion else None,
                    warm_start=warm_note)
    if champion is not None and champion.tags.get("run_key") == run_key:
        manifest.update(decision="nothing_new", exit_code=0, registered_version=champion.version,
                        reason="the champion was trained on this data with this config")
        _deploy(config, registry, manifest)
        return

    trained = stages.run("train", lambda: _train(config, dataset["dataset_dir"], warm_dir))
    manifest.update(mlflow_run_id=trained["mlflow_run_id"], model_dir=trained["model_dir"])
    report = stages.run("report", lambda: _report(config, trained))
    scores = stages.run("evaluate", lambda: _evaluate(config, trained, champion_dir, dataset["dataset_dir"], report))
    exported = stages.run("export", lambda: _export(config, trained, scores, registry))
    manifest.update(registered_version=exported["registered_version"])
    decision = stages.run("promote", lambda: _promote(config, registry, exported["registered_version"], scores,
                                                      exported))
    manifest.update(decision=decision["decision"], reason=decision["reason"],
                    exit_code=0 if decision["decision"] == "promoted" else EXIT_NOT_BETTER,
                    export_version=exported["version"], export_path=exported["path"])
    _deploy(config, registry, manifest)


def _old_version_note(config, version) -> str:
    return (f"{config.tracking.registered_model} v{version.version} was registered before MLflow models "
            "(its source has no MLmodel): lmpipe reads its Keras model folder, but mlflow.pyfunc "
            "and mlflow models serve cannot load it; the next promoted model is an MLflow model")


def _preprocess(config, beam_args) -> dict:
    result = run_preprocess(config, beam_args)
    return {"dataset_dir": result.dataset_dir, "fingerprint": result.fingerprint, "skipped": result.skipped}


def _warm_start(config, dataset_dir: str, champion_dir: str | None) -> tuple[str | None, str]:
    if config.train.warm_start != "champion":
        return None, "off"
    if champion_dir is None:
        return None, "no champion yet: training from scratch"
    from trainer.model_dir import MODEL_CONFIG, dataset_files, model_config_for

    vocab_files = [n for n in dataset_files(dataset_dir) if n.endswith(VOCAB_FILE)]
    if any(not os.path.exists(os.path.join(champion_dir, n))
           or read_vocab(os.path.join(champion_dir, n)) != read_vocab(os.path.join(dataset_dir, n))
           for n in vocab_files):
        return None, "the vocabulary changed: training from scratch"
    with open(os.path.join(champion_dir, MODEL_CONFIG)) as f:
        theirs = json.load(f)
    with open(os.path.join(dataset_dir, STATS_FILE)) as f:
        ours = model_config_for(config, json.load(f))
    loose = ("dropout", "recurrent_dropout", "init_scale", "precision")  # weights fit either way
    if any(theirs.get(k) != v for k, v in ours.items() if k not in loose):
        return None, "the model shape changed: training from scratch"
    return champion_dir, "from the champion's weights"


def _train(config, dataset_dir: str, warm_dir: str | None) -> dict:
    from trainer.train_run import train_model

    result = train_model(config, dataset_dir, warm_start_dir=warm_dir)
    return {"model_dir": result.model_dir, "mlflow_run_id": result.metrics["mlflow_run_id"],
            "test_ppl": result.metrics["test_ppl"], "skipped": result.skipped}


def _report(config, trained: dict) -> dict:
    """The decoding report for a newly trained model (the learning curves are already among
    its artifacts); a failing report is a warning, never a failed run."""
    if not config.run.reports:
        return {"skipped": True, "reason": "run.reports is off"}
    name, marker = ("translation", "bleu.json") if config.model.kind == "seq2seq" else ("decoding", "decoding.csv")
    folder = os.path.join(os.path.dirname(os.path.abspath(trained["model_dir"])), "reports", name)
    if trained["skipped"] and os.path.exists(os.path.join(folder, marker)):
        return {"skipped": True, "folder": folder}
    try:
        from pipeline.reports.run_reports import run_report

        return {"skipped": False, "folder": run_report(name, config, trained["model_dir"])}
    except Exception as err:  # noqa: BLE001 - reports are insight, not a gate
        return {"skipped": False, "warning": f"{name} report failed: {type(err).__name__}: {err}"}


def _evaluate(config, trained: dict, champion_dir: str | None, dataset_dir: str, report: dict) -> dict:
    """The promotion metric of the new model and the champion on the same test data:
    perplexity for language models, greedy BLEU for sequence-to-sequence models."""
    if config.model.kind == "seq2seq":
        return _evaluate_bleu(trained, champion_dir, dataset_dir, report)
    scores = {"metric": "test_ppl", "higher_is_better": False, "new": trained["test_ppl"], "champion": None}
    if champion_dir is None:
        return scores
    from trainer.data import load_token_stream
    from trainer.evaluation import evaluate
    from trainer.model_dir import load_trained_model

    stream = load_token_stream(dataset_dir, "test")
    ours, theirs = read_vocab(os.path.join(dataset_dir, VOCAB_FILE)), read_vocab(os.path.join(champion_dir, VOCAB_FILE))
    if ours != theirs:  # the champion reads the same text through its own vocabulary
        index = {token: i for i, token in enumerate(theirs)}
        import numpy as np

        mapping = np.array([index.get(token, UNK_ID) for token in ours], np.int32)
        stream = mapping[stream]
    scores.update(champion=evaluate(load_trained_model(champion_dir), stream).perplexity, same_vocabulary=ours == theirs)
    return scores


def _evaluate_bleu(trained: dict, champion_dir: str | None, dataset_dir: str, report: dict) -> dict:
    """Greedy test BLEU of both models (the new one's from its translation report when that
    ran); the champion reads the test sources as text through its own tokenizers (its
    vocabulary may differ), and both are scored against the same references."""
    from pipeline.core.pair_records import pair_tokenizers
    from serving.translation_eval import corpus_bleu, source_texts
    from trainer.pairs_data import load_pairs
    from trainer.model_dir import load_trained_model

    pairs = load_pairs(dataset_dir, "test")
    tokenizers = pair_tokenizers(trained["model_dir"])
    reported = os.path.join(report.get("folder", ""), "bleu.json")
    if report.get("folder") and os.path.exists(reported):
        with open(reported) as f:
            greedy = json.load(f)["test"]["greedy"]
        new_score, signature = greedy["bleu"], greedy["signature"]
    else:
        new = corpus_bleu(load_trained_model(trained["model_dir"]), tokenizers, pairs)
        new_score, signature = new.score, new.signature
    scores = {"metric": "test_bleu_greedy", "higher_is_better": True, "new": new_score, "champion": None,
              "bleu_signature": signature}
    if champion_dir is not None:
        theirs = pair_tokenizers(champion_dir)
        champion = corpus_bleu(load_trained_model(champion_dir), theirs, pairs,
                               source_texts=source_texts(tokenizers["source"], pairs))
        scores["champion"] = champion.score
    return scores


def _export(config, trained: dict, scores: dict, registry) -> dict:
    """The TF Serving version of the new model (reused if an interrupted run wrote it), its
    serving check, and its registered version: the same SavedModel as an MLflow Model."""
    from serving.check_export import check_export
    from serving.export import export_model, find_export_of

    model_dir = trained["model_dir"]
    found = find_export_of(os.path.join(config.export.base_path, config.export.model_name), model_dir)
    result = found or export_model(model_dir, config.export.base_path, config.export.model_name,
                                   config.export.default_signature, config.export.max_new_tokens,
                                   config.export.max_prompt_tokens, config.export.allow_unk)
    version, path, reused = result.version, result.path, found is not None
    report = check_export(path)
    registered = _register(config, registry, trained, path, scores)
    return {"version": version, "path": path, "reused": reused, "check_ok": report["ok"],
            "problems": report["problems"], "warmup_records": report.get("warmup_records", []),
            "registered_version": registered.version, "model_uri": registered.source}


def _register(config, registry, trained: dict, export_path: str, scores: dict):
    """The registered version of the training run (found again after an interrupted run):
    the export logged as an MLflow Model, linked to its metrics."""
    from serving.mlflow_model import register_export
    from trainer.registry import version_for_run
    from trainer.tracking import MODEL_ARTIFACT

    found = version_for_run(registry, trained["mlflow_run_id"])
    if found is not None and found.tags.get("export_path") == os.path.abspath(export_path):
        return found
    run_id = trained["mlflow_run_id"]
    if not registry.client.list_artifacts(run_id, MODEL_ARTIFACT):  # lost while tracking was down
        registry.client.log_artifacts(run_id, trained["model_dir"], MODEL_ARTIFACT)
    extra = {scores["metric"]: scores["new"]} if scores["metric"] != "test_ppl" else {}
    return register_export(config.tracking.uri, config.tracking.registered_model, export_path,
                           config.serve.max_batch_size, config.serve.compute_budget, extra)


def _promote(config, registry, version: str, scores: dict, exported: dict) -> dict:
    metric, champion, new = scores["metric"], scores["champion"], scores["new"]
    registry.set_tag(version, metric, f"{new:.4f}")
    margin = config.promote.min_improvement
    better = (new > champion * (1 + margin) if scores["higher_is_better"] else new < champion * (1 - margin)
              ) if champion is not None else True
    if not exported["check_ok"]:
        decision, reason = "failed_check", "the export failed the serving check: " + "; ".join(exported["problems"])
    elif champion is None:
        decision, reason = "promoted", f"first model: {metric} {new:.2f}"
    elif better:
        decision, reason = "promoted", (f"{metric} {new:.2f} beats the champion's {champion:.2f} "
                                        f"(min improvement {margin:.1%})")
    else:
        decision, reason = "not_better", (f"{metric} {new:.2f} does not beat the champion's "
                                          f"{champion:.2f} by {margin:.1%}")
    registry.set_tag(version, "decision", decision)
    registry.set_alias("champion" if decision == "promoted" else "challenger", version)
    return {"decision": decision, "reason": reason, "version": version}


def _deploy(config, registry, manifest: dict) -> None:
    """models.config (stable = champion, canary = latest challenger), TF Serving's batching and
    monitoring files beside it, and old-version pruning."""
    from serving.batching import BatchingParameters
    from serving.serving_config import prune_versions, write_models_config, write_serving_files

    champion = registry.version_with_alias("champion")
    if champion is None:
        return
    manifest["champion_version"] = champion.version
    stable, problem = _champion_export(config, champion)
    if problem is not None:  # models.config keeps serving what it served
        manifest["deploy_problem"] = problem
        return
    canary = None
    challenger = registry.version_with_alias("challenger")
    if config.promote.canary and challenger is not None and "export_version" in challenger.tags:
        canary = int(challenger.tags["export_version"])
        canary = canary if canary > stable else None
    manifest["models_config"] = write_models_config(config.export.base_path, config.export.model_name, stable, canary)
    manifest["serving_files"] = write_serving_files(config.export.base_path,
                                                    BatchingParameters.from_config(config.serve.batching))
    manifest["stable_version"], manifest["canary_version"] = stable, canary
    base = os.path.join(config.export.base_path, config.export.model_name)
    manifest["pruned_versions"] = prune_versions(base, config.export.keep_versions, {stable, canary} - {None})


def _champion_export(config, champion) -> tuple[int | None, str | None]:
    """(the TF Serving version of the champion, None), or (None, why it has none): the
    champion alias, however it was set (by a run or by hand in MLflow), names `stable`."""
    name = config.tracking.registered_model
    fix = f"write one with: lmpipe export --from models:/{name}@champion"
    if "export_version" not in champion.tags:
        return None, f"champion {name} v{champion.version} has no TF Serving export (no export_version tag); {fix}"
    stable = int(champion.tags["export_version"])
    folder = os.path.join(config.export.base_path, config.export.model_name, str(stable))
    if not os.path.isdir(folder):
        return None, (f"champion {name} v{champion.version} names export version {stable}, which is not in "
                      f"{os.path.dirname(folder)} (pruned or deleted); {fix}")
    return stable, None


def _write_manifest(config, manifest: dict) -> None:
    manifest["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    folder = os.path.join(config.run.work_dir, "manifests")
    os.makedirs(folder, exist_ok=True)
    text = json.dumps(manifest, indent=2, default=str) + "\n"
    for name in (f"{manifest['id']}.json", "latest.json"):
        tmp = os.path.join(folder, name + ".tmp")
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, os.path.join(folder, name))
    manifest["manifest_path"] = os.path.join(folder, f"{manifest['id']}.json")
