"""`lmpipe generate`: text from a model server (REST or gRPC) or an export run in this
process, whole or streamed token by token (beside `pipeline/orchestrate/cli.py`).

Every failure is one line and an exit code: 2 a bad knob or URL or a request the model
refused, 3 a missing export, 4 an unreachable server.

Example:
    lmpipe generate --url grpc://127.0.0.1:8500 --method top_p --p 0.9 "The meaning of"
    lmpipe generate --export-dir work/export/lm/1 --stream --method sample --seed 3 "The meaning of"
"""

from __future__ import annotations

import contextlib
import os

from pipeline.core.errors import InputDataError, LmpipeError, ServiceUnreachable, UsageError


def cmd_generate(args, extra: list[str]) -> int:
    """`lmpipe generate`: each prompt's text (or its tokens as they arrive, `--stream`) from a
    server (`--url`) or a SavedModel in this process (`--export-dir`); the knobs checked before
    anything is sent. -> exit code.
    """
    from serving.generation_module import SIGNATURE_KNOBS
    from serving.knobs import knob_problem

    knobs = {name: getattr(args, name) for name in SIGNATURE_KNOBS[args.method] if getattr(args, name) is not None}
    problem = knob_problem({k: [v] for k, v in knobs.items()}, max_new_tokens=2**31 - 1)
    if problem:
        raise UsageError(f"--{problem.split(' ')[0].replace('_', '-')}: {problem.replace(' for prompt 0', '')}")
    with _one_line_errors():
        if args.stream:
            return _print_stream(args, knobs)
        predictions = _predict(args, knobs)
    for prompt, pred in zip(args.prompts, predictions):
        texts = pred["text"] if isinstance(pred["text"], list) else [pred["text"]]
        scores = pred["log_prob"] if isinstance(pred["log_prob"], list) else [pred["log_prob"]]
        for text, score in zip(texts, scores):
            print(f"{prompt} -> {text}    (log p = {score:.2f})")
    return 0


@contextlib.contextmanager
def _one_line_errors():
    """Client and server failures as LmpipeErrors with the README's exit codes."""
    from serving.client import ServerUnreachable, ServingError
    from serving.rest_api import ServingError as RefusedLocally

    try:
        yield
    except ValueError as err:  # a URL without a scheme, a method that cannot stream
        raise UsageError(str(err)) from None
    except ServerUnreachable as err:
        raise ServiceUnreachable(str(err)) from None
    except (ServingError, RefusedLocally) as err:
        status, message = getattr(err, "status", 400), getattr(err, "message", str(err))
        error = UsageError if status < 500 else LmpipeError
        raise error(f"the model refused the request (HTTP {status}): {message}") from None


def _predict(args, knobs: dict) -> list:
    from serving.client import connect, request_instances
    from serving.local_predict import predict_local, prompt_input

    if args.export_dir:
        _require_saved_model(args.export_dir)
        instances = request_instances(args.prompts, args.method, prompt_input(args.export_dir, args.method), **knobs)
        return predict_local(args.export_dir, args.method, instances)
    client = connect(args.url, args.model)
    instances = request_instances(args.prompts, args.method, client.prompt_input(args.method), **knobs)
    return client.predict(args.method, instances)["predictions"]


def _print_stream(args, knobs: dict) -> int:
    """Prints each new piece as it arrives, then each prompt's whole text."""
    from serving.client import connect

    if args.method == "beam_search":
        raise UsageError("--stream decodes with greedy, sample, top_k or top_p, not beam_search")
    events = _stream_in_process(args, knobs) if args.export_dir else _stream_from_server(
        connect(args.url, args.model), args, knobs)
    for event in events:
        if event.get("done"):
            print(f"\n{args.prompts[event['index']]} -> {event['text']}    (log p = {event['log_prob']:.2f}, "
                  f"{event['tokens']} tokens, {event['stop_reason']})", flush=True)
        else:
            prefix = f"[{event['index']}]" if len(args.prompts) > 1 else ""
            print(prefix + event["piece"], end="" if len(args.prompts) == 1 else "\n", flush=True)
    return 0


def _stream_from_server(client, args, knobs: dict):
    """lmpipe serve's Server-Sent Events; the stream signatures on any other server (TF
    Serving has no :generate_stream: it answers 400 Malformed request or 404)."""
    from serving.client import GrpcServingClient, ServingError

    if isinstance(client, GrpcServingClient):
        yield from client.stream(args.prompts, args.method, **knobs)
        return
    try:
        yield from client.stream_sse(args.prompts, args.method, **knobs)
    except ServingError as err:
        if err.status == 404 or "Malformed request" in err.message:
            yield from client.stream(args.prompts, args.method, **knobs)
        else:
            raise


def _stream_in_process(args, knobs: dict):
    import tensorflow as tf

    from serving.local_predict import prompt_input
    from serving.rest_api import graph_error
    from serving.saved_model_session import SessionModel
    from serving.stream import stream_events, stream_start_inputs

    _require_saved_model(args.export_dir)
    model = SessionModel(args.export_dir)
    name = prompt_input(args.export_dir, args.method)

    def call(signature, inputs):
        try:
            return model.run(signature, inputs)
        except tf.errors.OpError as err:
            raise graph_error(err) from None

    yield from stream_events(call, stream_start_inputs(args.prompts, args.method, name, **knobs), name)


def _require_saved_model(export_dir: str) -> None:
    if not os.path.exists(os.path.join(export_dir, "saved_model.pb")):
        raise InputDataError(f"no SavedModel in {export_dir} (saved_model.pb missing); give an export "
                             "version folder such as work/export/lm/1")
