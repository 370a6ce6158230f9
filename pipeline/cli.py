"""The `lmpipe` command line (top floor: the only code that knows every stage).

    lmpipe config show [--config FILE] [--set section.key=value ...]
    lmpipe preprocess [--config FILE] [--set ...] [any Beam pipeline option ...]
    lmpipe train [--config FILE] [--set ...]
    lmpipe evaluate [--config FILE] [--split test] [--model-dir DIR]

Exit codes: 0 success, 1 failure, 2 config or usage error, 3 unusable input data,
4 MLflow tracking unreachable.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Callable

from pipeline.errors import LmpipeError

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is first imported

DEFAULT_CONFIG = "pipeline_config.yaml"


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", default=DEFAULT_CONFIG,
        help=f"path of the pipeline config (default: {DEFAULT_CONFIG})")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="override one config key, e.g. --set train.epochs=3 (repeatable)")


def _load(args):
    from pipeline.config_loader import load_config

    path = args.config
    if path == DEFAULT_CONFIG and not os.path.exists(path):
        path = None  # no config file here: the built-in defaults
    return load_config(path, args.overrides)


def cmd_config_show(args, extra: list[str]) -> int:
    from pipeline.config_loader import dump_config

    print(dump_config(_load(args)), end="")
    return 0


def cmd_preprocess(args, beam_args: list[str]) -> int:
    config = _load(args)
    from pipeline.preprocess import run_preprocess

    result = run_preprocess(config, beam_args)
    state = "up to date, skipped" if result.skipped else "written"
    print(f"dataset {state}: {result.dataset_dir}")
    for split, s in result.stats["splits"].items():
        print(f"  {split:5s} documents={s['documents']:,} lines={s['lines']:,} "
              f"tokens={s['tokens']:,} oov_rate={s['oov_rate']:.4%}")
        _warn_counted(split, s)
    print(f"  vocabulary: {result.stats['vocab_size']:,} entries ({config.tokenizer.kind})")
    return 0


def _dataset_for(config) -> str:
    from pipeline.constants import STATS_FILE
    from pipeline.errors import InputDataError
    from pipeline.preprocess import dataset_dir_for

    dataset_dir, _, _ = dataset_dir_for(config)
    if not os.path.exists(os.path.join(dataset_dir, STATS_FILE)):
        raise InputDataError(
            f"no preprocessed dataset for this config (expected {dataset_dir}); "
            "run lmpipe preprocess with the same config first")
    return dataset_dir


def cmd_train(args, extra: list[str]) -> int:
    config = _load(args)
    dataset_dir = _dataset_for(config)
    from trainer.train_run import train_language_model

    result = train_language_model(config, dataset_dir)
    m = result.metrics
    state = "already trained, skipped" if result.skipped else "trained"
    print(f"model {state}: {result.model_dir}")
    print(f"  valid ppl {m['valid_ppl']:.2f}, test ppl {m['test_ppl']:.2f} "
          f"({m['test_bits_per_token']:.3f} bits/token), {m['epochs']} epochs, "
          f"{m['param_count']:,} parameters")
    print(f"  MLflow run {m['mlflow_run_id']} at {config.tracking.uri}"
          + (f"; registered {m['registered_model']} v{m['registered_version']}" if "registered_version" in m else ""))
    return 0


def cmd_evaluate(args, extra: list[str]) -> int:
    config = _load(args)
    from trainer.data import load_token_stream
    from trainer.evaluation import evaluate
    from trainer.train_run import MODEL_DIR, load_trained_model, run_dir_for

    dataset_dir = args.dataset_dir or _dataset_for(config)
    model_dir = args.model_dir
    if model_dir is None:
        with open(os.path.join(dataset_dir, "stats.json")) as f:
            fingerprint = json.load(f)["fingerprint"]
        model_dir = os.path.join(run_dir_for(config, fingerprint), MODEL_DIR)
    if not os.path.exists(os.path.join(model_dir, "metrics.json")):
        from pipeline.errors import InputDataError

        raise InputDataError(f"no trained model at {model_dir}; run lmpipe train first or pass --model-dir")
    model = load_trained_model(model_dir)
    for split in args.split:
        result = evaluate(model, load_token_stream(dataset_dir, split))
        print(json.dumps({"split": split, "perplexity": result.perplexity, "loss": result.loss,
                          "bits_per_token": result.bits_per_token, "tokens": result.tokens}))
    return 0


def _warn_counted(split: str, s: dict) -> None:
    notes = {
        "invalid_utf8_lines": "lines had invalid UTF-8 (bytes replaced by U+FFFD)",
        "long_lines_split": "lines exceeded preprocess.max_line_chars and were cut at whitespace",
        "bad_records": "JSON records were unreadable or lacked data.text_field and were skipped",
    }
    for key, text in notes.items():
        if s.get(key):
            print(f"  warning: {split}: {s[key]:,} {text}", file=sys.stderr)


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Callable]]:
    parser = argparse.ArgumentParser(
        prog="lmpipe", description="Train LSTM language models and serve text generation.")
    sub = parser.add_subparsers(dest="command", required=True)
    handlers: dict[str, Callable] = {}

    config = sub.add_parser("config", help="inspect the configuration")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    show = config_sub.add_parser("show", help="print the effective config as YAML")
    _config_args(show)
    handlers["config"] = cmd_config_show

    pre = sub.add_parser(
        "preprocess", help="corpus -> TFRecords, vocab, stats (Apache Beam)",
        description="Unknown flags are Beam pipeline options (--runner, --direct_num_workers, ...).")
    _config_args(pre)
    handlers["preprocess"] = cmd_preprocess

    train = sub.add_parser("train", help="train the language model on the preprocessed data (MLflow)")
    _config_args(train)
    handlers["train"] = cmd_train

    ev = sub.add_parser("evaluate", help="perplexity of a trained model on dataset splits")
    _config_args(ev)
    ev.add_argument("--split", nargs="+", default=["test"], choices=["train", "valid", "test"])
    ev.add_argument("--model-dir", help="a trained model folder (default: this config's run)")
    ev.add_argument("--dataset-dir", help="a preprocessed dataset folder (default: this config's)")
    handlers["evaluate"] = cmd_evaluate
    return parser, handlers


def main(argv: list[str] | None = None) -> int:
    parser, handlers = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "preprocess":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
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
