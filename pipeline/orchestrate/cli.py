"""The `lmpipe` command line (the top floor, with the scheduled run: the only code that knows every stage).

    lmpipe config show [--config FILE] [--set section.key=value ...]
    lmpipe preprocess [--config FILE] [--set ...] [any Beam pipeline option ...]
    lmpipe train [--config FILE] [--set ...]
    lmpipe evaluate [--config FILE] [--split test] [--model-dir DIR]
    lmpipe export [--config FILE] [--no-check];  lmpipe check-export DIR
    lmpipe serve [--config FILE] [--model-base-path DIR] [--port 8501]
    lmpipe generate (--url URL --model NAME | --export-dir DIR) [--method top_p] PROMPT ...
    lmpipe run [--config FILE] [Beam options];  lmpipe schedule --cron "0 3 * * *" [--systemd]
    lmpipe report gradients|gates|decoding [--config FILE] [--model-dir DIR]

Exit codes: 0 success, 1 failure (or a failed serving check), 2 config or usage error (a request the
model refused included), 3 unusable or missing input, 4 a server unreachable (MLflow tracking, a model
server); lmpipe run adds 10 not better, 11 locked.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Callable

from pipeline.core.errors import InputDataError, LmpipeError
from pipeline.orchestrate.cli_args import (
    DEFAULT_CONFIG, config_args, config_command_args, evaluate_args, export_args, generate_args, report_args,
    schedule_args, serve_args,
)
from pipeline.orchestrate.generate_command import cmd_generate
from pipeline.orchestrate.quiet_logs import configure_logging  # first: it sets TF_CPP_MIN_LOG_LEVEL before TensorFlow loads


def _load(args):
    from pipeline.core.config_loader import load_config

    path = args.config
    if path == DEFAULT_CONFIG and not os.path.exists(path):
        path = None  # no config file here: the built-in defaults
    return load_config(path, args.overrides)


def cmd_config_show(args, extra: list[str]) -> int:
    """`lmpipe config show`: prints the effective config (file + --set) as YAML."""
    from pipeline.core.config_loader import dump_config

    print(dump_config(_load(args)), end="")
    return 0


def cmd_preprocess(args, beam_args: list[str]) -> int:
    """`lmpipe preprocess`: writes (or finds) the dataset folder and prints its counts."""
    config = _load(args)
    from pipeline.preprocess.run import run_preprocess

    result = run_preprocess(config, beam_args)
    state = "up to date, skipped" if result.skipped else "written"
    print(f"dataset {state}: {result.dataset_dir}")
    for split, s in result.stats["splits"].items():
        print(f"  {split:5s} documents={s['documents']:,} lines={s['lines']:,} "
              f"tokens={s['tokens']:,} oov_rate={s['oov_rate']:.4%}")
        _warn_counted(split, s)
    if "vocab_size" in result.stats:
        print(f"  vocabulary: {result.stats['vocab_size']:,} entries ({config.tokenizer.kind})")
    else:  # a pair dataset with one vocabulary per side
        sizes = ", ".join(f"{side} {v['size']:,}" for side, v in result.stats["vocab"].items())
        print(f"  vocabularies: {sizes} entries ({config.tokenizer.kind})")
    return 0


def _dataset_for(config) -> str:
    from pipeline.core.constants import STATS_FILE
    from pipeline.core.errors import InputDataError
    from pipeline.preprocess.run import dataset_dir_for

    dataset_dir, _, _ = dataset_dir_for(config)
    if not os.path.exists(os.path.join(dataset_dir, STATS_FILE)):
        raise InputDataError(
            f"no preprocessed dataset for this config (expected {dataset_dir}); "
            "run lmpipe preprocess with the same config first")
    return dataset_dir


def cmd_train(args, extra: list[str]) -> int:
    """`lmpipe train`: trains (or resumes, or finds) the model and prints its metrics."""
    config = _load(args)
    dataset_dir = _dataset_for(config)
    from trainer.train_run import train_model

    result = train_model(config, dataset_dir)
    m = result.metrics
    if m.get("worker"):
        print(f"worker finished {m['epochs']} epochs in step with the chief "
              f"(valid ppl {m['valid_ppl']:.2f}); the chief writes the model and MLflow records")
        return 0
    state = "already trained, skipped" if result.skipped else "trained"
    print(f"model {state}: {result.model_dir}")
    print(f"  valid ppl {m['valid_ppl']:.2f}, test ppl {m['test_ppl']:.2f} "
          f"({m['test_bits_per_token']:.3f} bits/token), {m['epochs']} epochs, "
          f"{m['param_count']:,} parameters")
    print(f"  MLflow run {m['mlflow_run_id']} at {config.tracking.uri}; lmpipe export registers it "
          f"in {config.tracking.registered_model} (the SavedModel as an MLflow Model)")
    return 0


def cmd_evaluate(args, extra: list[str]) -> int:
    """`lmpipe evaluate`: one JSON line per split (perplexity; seq2seq: BLEU)."""
    config = _load(args)
    from trainer.data import load_token_stream
    from trainer.evaluation import evaluate
    from trainer.model_dir import load_trained_model, model_kind

    dataset_dir = args.dataset_dir or _dataset_for(config)
    model_dir = _trained_model_dir(config, args.model_dir, dataset_dir)
    model = load_trained_model(model_dir)
    if model_kind(model_dir) == "seq2seq":
        return _evaluate_seq2seq(model, model_dir, dataset_dir, args.split)
    for split in args.split:
        result = evaluate(model, load_token_stream(dataset_dir, split))
        print(json.dumps({"split": split, "perplexity": result.perplexity, "loss": result.loss,
                          "bits_per_token": result.bits_per_token, "tokens": result.tokens}))
    return 0


def _evaluate_seq2seq(model, model_dir: str, dataset_dir: str, splits: list[str]) -> int:
    """Perplexity and greedy BLEU (sacrebleu, with its signature) of each split's pairs."""
    from pipeline.core.pair_records import pair_tokenizers
    from serving.translation_eval import corpus_bleu
    from trainer.pairs_data import load_pairs
    from trainer.seq2seq_training import evaluate_pairs

    tokenizers = pair_tokenizers(model_dir)
    for split in splits:
        pairs = load_pairs(dataset_dir, split)
        result, bleu = evaluate_pairs(model, pairs), corpus_bleu(model, tokenizers, pairs)
        print(json.dumps({"split": split, "perplexity": result.perplexity, "loss": result.loss,
                          "tokens": result.tokens, "pairs": len(pairs), "bleu_greedy": bleu.score,
                          "bleu_signature": bleu.signature}))
    return 0


def _trained_model_dir(config, model_dir: str | None, dataset_dir: str | None = None) -> str:
    from pipeline.core.errors import InputDataError
    from trainer.model_dir import METRICS, MODEL_DIR, run_dir_for

    if model_dir is None:
        dataset_dir = dataset_dir or _dataset_for(config)
        with open(os.path.join(dataset_dir, "stats.json")) as f:
            fingerprint = json.load(f)["fingerprint"]
        model_dir = os.path.join(run_dir_for(config, fingerprint), MODEL_DIR)
    if not os.path.exists(os.path.join(model_dir, METRICS)):
        raise InputDataError(f"no trained model at {model_dir}; run lmpipe train first or pass --model-dir")
    return model_dir


def cmd_export(args, extra: list[str]) -> int:
    """A new TF Serving version of the trained model, registered in MLflow as the same
    SavedModel; or, with --from, a new TF Serving version of a registered version."""
    config = _load(args)
    if args.source:
        return _export_from_registry(config, args.source, args.check)
    model_dir = _trained_model_dir(config, args.model_dir)
    from serving.export import export_model

    result = export_model(model_dir, config.export.base_path, config.export.model_name,
                          config.export.default_signature, config.export.max_new_tokens,
                          config.export.max_prompt_tokens, config.export.allow_unk)
    print(f"exported version {result.version}: {result.path}")
    code = _report_check(result.path) if args.check else 0
    if args.register:
        from serving.mlflow_model import register_export

        version = register_export(config.tracking.uri, config.tracking.registered_model, result.path,
                                  config.serve.max_batch_size, config.serve.compute_budget)
        print(f"registered {version.name} v{version.version} ({version.source}): the same SavedModel as an "
              f"MLflow Model; load it with mlflow.pyfunc.load_model('models:/{version.name}/{version.version}')")
    return code


def _export_from_registry(config, source: str, check: bool) -> int:
    from serving.mlflow_model import export_from_registry
    from trainer.registry import ModelRegistry

    registry = ModelRegistry(config.tracking.uri, config.tracking.registered_model)
    options = {"default_signature": config.export.default_signature, "max_new_tokens": config.export.max_new_tokens,
               "max_prompt_tokens": config.export.max_prompt_tokens, "allow_unk": config.export.allow_unk}
    version, result, copied = export_from_registry(registry, source, config.export.base_path,
                                                   config.export.model_name, options)
    how = "its SavedModel" if copied else "exported from its Keras model folder"
    print(f"exported {version.name} v{version.version} as version {result.version} ({how}): {result.path}")
    return _report_check(result.path) if check else 0


def cmd_check_export(args, extra: list[str]) -> int:
    """`lmpipe check-export DIR`: the clean-process TF Serving check of one version."""
    if not os.path.isdir(args.export_dir):
        raise InputDataError(f"no export version folder {args.export_dir}; give a folder such as "
                             "work/export/lm/1 (lmpipe export writes them)")
    return _report_check(args.export_dir)


def _report_check(path: str) -> int:
    from serving.check_export import check_export

    report = check_export(path)
    for record in report.get("warmup_records", []):
        same = "equal to tf.saved_model.load" if record["equals_object_load"] else "DIFFERENT from tf.saved_model.load"
        print(f"  warmup record {record['record']} {record['signature']}: ran in a TF Serving Session, "
              + ", ".join(f"{k} {v}" for k, v in sorted(record["outputs"].items())) + f"; {same}")
    for problem in report["problems"]:
        print(f"  problem: {problem}", file=sys.stderr)
    verdict = "passes" if report["ok"] else "FAILS"
    print(f"serving check {verdict}: {path} (clean process, TF Serving's Session loading path, "
          f"{len(report.get('warmup_records', []))} warmup records, {report.get('ops', 0)} op types)")
    return 0 if report["ok"] else 1


def cmd_serve(args, extra: list[str]) -> int:
    """`lmpipe serve`: TF Serving's REST and gRPC APIs over the export base path (or
    --print-tf-serving-command)."""
    config = _load(args)
    from serving.batching import BatchingParameters
    from serving.server import ServerLimits, serve

    base = args.model_base_path or os.path.join(config.export.base_path, config.export.model_name)
    config_dir = args.model_config_dir or (None if args.model_base_path else config.export.base_path)
    serve_config = config.serve
    grpc_port = serve_config.grpc_port if args.grpc_port is None else args.grpc_port
    if args.print_tf_serving_command:
        from serving.serving_config import tf_serving_command

        print(tf_serving_command(config_dir or config.export.base_path, grpc_port or 8500,
                                 args.port or serve_config.port, batching=serve_config.batching.enabled))
        return 0
    limits = ServerLimits(max_batch_size=serve_config.max_batch_size,
                          max_request_bytes=serve_config.max_request_bytes,
                          compute_budget=serve_config.compute_budget,
                          max_concurrent_predictions=serve_config.max_concurrent_predictions)
    batching = BatchingParameters.from_config(serve_config.batching) if serve_config.batching.enabled else None
    serve(base, host=args.host or serve_config.host, port=args.port or serve_config.port, limits=limits,
          batching=batching, grpc_port=grpc_port, config_dir=config_dir)
    return 0


def cmd_run(args, beam_args: list[str]) -> int:
    """`lmpipe run`: every stage under the lock; exits with the manifest's code (0, 10, 11)."""
    config = _load(args)
    from pipeline.orchestrate.scheduled_run import run_pipeline

    manifest = run_pipeline(config, beam_args)
    print(f"decision: {manifest['decision']} - {manifest.get('reason', '')}")
    if manifest.get("stable_version"):
        print(f"  champion: {config.tracking.registered_model} v{manifest['champion_version']}, served as "
              f"export version {manifest['stable_version']} ({manifest['models_config']})")
    for key in ("champion_note", "deploy_problem"):
        if manifest.get(key):
            print(f"lmpipe: warning: {manifest[key]}", file=sys.stderr)
    print(f"  dataset: {manifest.get('dataset_dir')}  MLflow: {config.tracking.uri}")
    print(f"  manifest: {manifest.get('manifest_path')}")
    return manifest["exit_code"]


def cmd_schedule(args, extra: list[str]) -> int:
    """`lmpipe schedule`: prints (or installs) a crontab line or systemd units."""
    from pipeline.orchestrate.schedule import schedule_command

    print(schedule_command(args.config, args.cron, systemd=args.systemd, install=args.install,
                           log_file=_load(args).run.log_file), end="")
    return 0


def cmd_report(args, extra: list[str]) -> int:
    """`lmpipe report NAME`: writes an insight report and logs it to the model's MLflow run."""
    config = _load(args)
    model_dir = _trained_model_dir(config, args.model_dir)
    from pipeline.reports.run_reports import run_report

    folder = run_report(args.report, config, model_dir, text=args.text)
    print(f"{args.report} report: {folder}")
    for name in sorted(os.listdir(folder)):
        print(f"  {name}")
    return 0


def _warn_counted(split: str, s: dict) -> None:
    notes = {
        "invalid_utf8_lines": "lines had invalid UTF-8 (bytes replaced by U+FFFD)",
        "long_lines_split": "lines exceeded preprocess.max_line_chars and were cut at whitespace",
        "bad_records": "JSON records were unreadable or lacked data.text_field and were skipped",
        "skipped_empty": "pairs had an empty side and were skipped",
        "skipped_too_long": "pairs had a side over preprocess.max_pair_tokens tokens and were skipped",
        "skipped_bad_records": "pair records were unreadable (columns or fields missing) and were skipped",
        "skipped_unpaired": "lines had no partner line and were skipped",
    }
    for key, text in notes.items():
        if s.get(key):
            print(f"  warning: {split}: {s[key]:,} {text}", file=sys.stderr)


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Callable]]:
    """The argument parser and each subcommand's handler. Example:
    `build_parser()[0].parse_args(["train"]).command` -> "train"."""
    parser = argparse.ArgumentParser(
        prog="lmpipe", description="Train LSTM language models and serve text generation.")
    sub = parser.add_subparsers(dest="command", required=True)
    subcommands = [  # name, help, description, its arguments, its handler
        ("config", "inspect the configuration", None, config_command_args, cmd_config_show),
        ("preprocess", "corpus -> TFRecords, vocab, stats (Apache Beam)",
         "Unknown flags are Beam pipeline options (--runner, --direct_num_workers, ...).", config_args, cmd_preprocess),
        ("train", "train the language model on the preprocessed data (MLflow)", None, config_args, cmd_train),
        ("evaluate", "perplexity of a trained model on dataset splits", None, evaluate_args, cmd_evaluate),
        ("export", "write the trained model as a new SavedModel version", None, export_args, cmd_export),
        ("check-export", "prove an export runs without this project (TF Serving)", None,
         lambda p: p.add_argument("export_dir"), cmd_check_export),
        ("serve", "serve the exported versions with TF Serving's REST API", None, serve_args, cmd_serve),
        ("generate", "generate text through a server or a SavedModel", None, generate_args, cmd_generate),
        ("run", "every stage, idempotent and locked: for cron, systemd or Airflow",
         "Exit codes: 0 promoted or nothing new, 10 not better, 11 locked, 1 failure.", config_args, cmd_run),
        ("report", "insight reports: gradients, gates, decoding (PNG + CSV/JSON, MLflow)", None,
         report_args, cmd_report),
        ("schedule", "print (or --install) a crontab line or a systemd timer for lmpipe run", None,
         schedule_args, cmd_schedule),
    ]
    handlers: dict[str, Callable] = {}
    for name, help_text, description, add_arguments, handler in subcommands:
        add_arguments(sub.add_parser(name, help=help_text, description=description))
        handlers[name] = handler
    return parser, handlers


def main(argv: list[str] | None = None) -> int:
    """The `lmpipe` entry point: parses `argv`, runs the subcommand, and returns its exit
    code (an LmpipeError prints one line and returns its code). Example: `main(["config",
    "show"])` -> 0."""
    parser, handlers = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command not in ("preprocess", "run"):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    configure_logging(import_tensorflow=args.command not in ("config", "schedule"))  # the others load models
    try:
        return handlers[args.command](args, extra)
    except LmpipeError as err:
        print(f"lmpipe: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("lmpipe: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
