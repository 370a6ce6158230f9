"""What each `lmpipe` subcommand accepts: its argparse arguments, one function a subcommand
(`cli.build_parser` pairs each with its handler).

Example:
    >>> parser = argparse.ArgumentParser(); serve_args(parser)
    >>> parser.parse_args(["--port", "9000"]).port
    9000
"""

from __future__ import annotations

import argparse

DEFAULT_CONFIG = "pipeline_config.yaml"


def config_args(parser: argparse.ArgumentParser) -> None:
    """--config and --set, which every config-reading subcommand takes."""
    parser.add_argument(
        "--config", default=DEFAULT_CONFIG,
        help=f"path of the pipeline config (default: {DEFAULT_CONFIG})")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="override one config key, e.g. --set train.epochs=3 (repeatable)")


def config_command_args(config: argparse.ArgumentParser) -> None:
    """lmpipe config show."""
    config_sub = config.add_subparsers(dest="config_command", required=True)
    config_args(config_sub.add_parser("show", help="print the effective config as YAML"))


def evaluate_args(ev: argparse.ArgumentParser) -> None:
    """lmpipe evaluate: the splits, the model and dataset folders."""
    config_args(ev)
    ev.add_argument("--split", nargs="+", default=["test"], choices=["train", "valid", "test"])
    ev.add_argument("--model-dir", help="a trained model folder (default: this config's run)")
    ev.add_argument("--dataset-dir", help="a preprocessed dataset folder (default: this config's)")


def export_args(ex: argparse.ArgumentParser) -> None:
    """lmpipe export: the model folder, the check, the registration, a registered source."""
    config_args(ex)
    ex.add_argument("--model-dir", help="a trained model folder (default: this config's run)")
    ex.add_argument("--no-check", dest="check", action="store_false",
                    help="skip the clean-process serving check")
    ex.add_argument("--no-register", dest="register", action="store_false",
                    help="do not log the export as an MLflow Model nor register it")
    ex.add_argument("--from", dest="source", metavar="MODELS_URI",
                    help="export a registered version instead: models:/<name>@<alias> or models:/<name>/<version>")


def serve_args(srv: argparse.ArgumentParser) -> None:
    """lmpipe serve: the versions to serve, the address and ports."""
    config_args(srv)
    srv.add_argument("--model-base-path", help="<export.base_path>/<model_name> (default from config)")
    srv.add_argument("--host", help="bind address (default serve.host, 127.0.0.1)")
    srv.add_argument("--port", type=int, help="REST port (default serve.port, 8501)")
    srv.add_argument("--grpc-port", type=int, help="gRPC port (default serve.grpc_port, 8500; 0: no gRPC)")
    srv.add_argument("--print-tf-serving-command", action="store_true",
                     help="print the tensorflow_model_server command for the files lmpipe run writes, and exit")
    srv.add_argument("--model-config-dir", help="folder of a models.config pinning versions and labels "
                     "(default: export.base_path when --model-base-path is not given)")


def generate_args(gen: argparse.ArgumentParser) -> None:
    """lmpipe generate: the prompts, where the model is, the method and its knobs."""
    gen.add_argument("prompts", nargs="+")
    where = gen.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a TF Serving or lmpipe serve address: http://host:8501 (REST) "
                       "or grpc://host:8500 (gRPC)")
    where.add_argument("--export-dir", help="a SavedModel version folder, run in this process")
    gen.add_argument("--model", default="lm", help="model name on the server")
    gen.add_argument("--method", default="top_p", choices=["greedy", "beam_search", "sample", "top_k", "top_p"])
    gen.add_argument("--stream", action="store_true",
                     help="print tokens as they arrive (lmpipe serve: Server-Sent Events; any TF Serving or "
                          "--export-dir: the stream_start / stream_next signatures)")
    for name, kind in [("max_new_tokens", int), ("min_new_tokens", int), ("temperature", float),
                       ("k", int), ("p", float), ("seed", int), ("beam_width", int),
                       ("repetition_penalty", float), ("no_repeat_ngram_size", int), ("length_penalty", float)]:
        gen.add_argument("--" + name.replace("_", "-"), dest=name, type=kind)


def report_args(rep: argparse.ArgumentParser) -> None:
    """lmpipe report: which report, the model folder, the text to trace."""
    rep.add_argument("report", choices=["gradients", "gates", "decoding", "translation"],
                     help="translation: seq2seq models (BLEU, samples, attention heatmaps)")
    config_args(rep)
    rep.add_argument("--model-dir", help="a trained model folder (default: this config's run)")
    rep.add_argument("--text", help="gates: the text to trace (default: lines of the test split)")


def schedule_args(sch: argparse.ArgumentParser) -> None:
    """lmpipe schedule: the cron expression, systemd or crontab, install."""
    config_args(sch)
    sch.add_argument("--cron", default="0 3 * * *", help='cron expression (default "0 3 * * *")')
    sch.add_argument("--systemd", action="store_true", help="a systemd service + timer instead of crontab")
    sch.add_argument("--install", action="store_true", help="install it (user crontab / ~/.config/systemd/user)")
