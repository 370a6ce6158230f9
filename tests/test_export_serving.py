"""Train a tiny model, export it, prove it TF-Serving-ready, serve it over REST, switch versions."""

import json
import os
import re
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from pipeline.orchestrate.cli import main
from serving.check_export import check_export
from serving.client import ServingClient, ServingError
from serving.generation_module import SIGNATURE_KNOBS
from serving.warmup import read_warmup_requests

from conftest import session_path_signatures, start_lmpipe_serve, write

SIGNATURES = {"greedy", "beam_search", "sample", "top_k", "top_p", "score", "serving_default",
              "stream_start", "stream_next"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    text = "".join(f"the cat number {i % 7} sat on the mat {i % 5} .\n" for i in range(400))
    corpus = write(root / "corpus.txt", text)
    args = ["--set", f"data.train={corpus}", "--set", "data.format=lines",
            "--set", f"preprocess.output_dir={root / 'data'}", "--set", f"train.output_dir={root / 'train'}",
            "--set", f"export.base_path={root / 'export'}", "--set", "export.model_name=tiny",
            "--set", "export.max_new_tokens=40", "--set", "export.max_prompt_tokens=60",
            "--set", "model.hidden_dim=24", "--set", "model.embedding_dim=24", "--set", "model.num_layers=1",
            "--set", "train.batch_size=8", "--set", "train.bptt=10", "--set", "train.epochs=3",
            "--set", "train.optimizer=adam", "--set", "train.learning_rate=0.02",
            "--set", f"tracking.uri=sqlite:///{root}/mlflow.db"]
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert main(["preprocess", *args]) == 0
        assert main(["train", *args]) == 0
        assert main(["export", "--no-check", *args]) == 0
    finally:
        os.chdir(cwd)
    return root, args


def test_export_layout_metadata_and_warmup(trained):
    root, _ = trained
    version = root / "export" / "tiny" / "1"
    assert (version / "saved_model.pb").exists() and (version / "assets" / "vocab.txt").exists()
    meta = json.load(open(version / "assets.extra" / "lmpipe_export.json"))
    import tensorflow_text

    assert meta["tensorflow_text"] == tensorflow_text.__version__
    assert meta["default_signature"] == "top_p" and meta["max_new_tokens"] == 40
    warm = read_warmup_requests(str(version / "assets.extra" / "tf_serving_warmup_requests"))
    assert {name for name, _ in warm} == SIGNATURES
    assert not [n for n in os.listdir(root / "export" / "tiny") if n.startswith(".tmp")]


@pytest.mark.slow
def test_clean_process_check_and_saved_model_cli(trained):
    root, _ = trained
    version = str(root / "export" / "tiny" / "1")
    report = check_export(version)
    assert report["ok"], report["problems"]
    assert set(report["signatures"]) == SIGNATURES
    # Every warmup record ran in TF Serving's Session path, as tf.saved_model.load answers it.
    assert sorted(r["signature"] for r in report["warmup_records"]) == sorted(SIGNATURES)
    assert all(r["equals_object_load"] for r in report["warmup_records"])
    assert report["signatures"]["beam_search"]["text"] == [2, 4]
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    shown = subprocess.run([cli, "show", "--dir", version, "--all"], capture_output=True, text=True,
                           env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    for name in SIGNATURES:
        assert f"signature_def['{name}']" in shown.stdout
    assert "inputs['beam_width'] tensor_info" in shown.stdout and "outputs['log_prob']" in shown.stdout


def test_signatures_in_process_exact_and_consistent(trained):
    root, _ = trained
    model = tf.saved_model.load(str(root / "export" / "tiny" / "1"))
    base = {"max_new_tokens": [8, 8], "min_new_tokens": [0, 0], "repetition_penalty": [1.0, 1.0],
            "no_repeat_ngram_size": [0, 0]}

    def call(name, prompts, **knobs):
        specs = model.signatures[name].structured_input_signature[1]
        values = {**base, **knobs, "prompt": prompts}
        return model.signatures[name](**{k: tf.constant(values[k], specs[k].dtype) for k in specs})

    greedy = call("greedy", ["the cat", "the cat number 3 sat"])
    alone = call("greedy", ["the cat number 3 sat"], **{k: v[:1] for k, v in base.items()})
    assert greedy["text"].numpy()[1] == alone["text"].numpy()[0]
    top_k1 = call("top_k", ["the cat", "the cat number 3 sat"], temperature=[1.0, 1.0], seed=[5, 6], k=[1, 1])
    assert top_k1["text"].numpy().tolist() == greedy["text"].numpy().tolist()
    beam = call("beam_search", ["the cat", "on"], beam_width=[3, 2], length_penalty=[0.6, 0.6])
    assert beam["text"].shape == (2, 3) and beam["token_ids"].shape[:2] == (2, 3)
    score = model.signatures["score"](text=tf.constant(["the cat sat on the mat", "mat the on sat cat the"]))
    assert score["perplexity"].numpy()[0] < score["perplexity"].numpy()[1]
    assert score["tokens"].numpy().tolist() == [7, 7]  # 6 words + <eos>


@pytest.mark.slow
def test_rest_server_every_signature_errors_and_version_switch(trained):
    root, args = trained
    server, url, client, status = start_lmpipe_serve(root / "export" / "tiny", "tiny")
    try:
        assert status["model_version_status"][0]["version"] == "1"
        metadata = client.metadata()
        defs = metadata["metadata"]["signature_def"]["signature_def"]
        assert SIGNATURES <= set(defs) and "prompt" in defs["top_p"]["inputs"]  # + __saved_model_init_op
        for method in SIGNATURE_KNOBS:
            knobs = {"seed": 3} if "seed" in SIGNATURE_KNOBS[method] else {}
            preds = client.generate(["the cat", "on the"], method=method, max_new_tokens=6, **knobs)
            assert len(preds) == 2 and set(preds[0]) == {"text", "token_ids", "lengths", "log_prob"}
        assert client.score(["the cat sat"])[0]["tokens"] == 4
        columnar = client.predict("greedy", inputs={"prompt": ["the"], "max_new_tokens": [4], "min_new_tokens": [0],
                                                    "repetition_penalty": [1.0], "no_repeat_ngram_size": [0]})
        assert set(columnar["outputs"]) == {"text", "token_ids", "lengths", "log_prob"}

        bad = [
            (dict(signature="top_k", instances=[{"prompt": "a"}]), "missing input"),
            (dict(signature="nope", instances=[{"prompt": "a"}]), "unknown signature 'nope'"),
            (dict(signature="top_k", instances=_row("top_k", k=0)), "k must be in [1, 2147483647], got 0 for prompt 0"),
            (dict(signature="top_p", instances=_row("top_p", p=1.5)), "p must be in (0, 1]"),
            (dict(signature="greedy", instances=_row("greedy", max_new_tokens=41)), "max_new_tokens must be in [0, 40]"),
            (dict(signature="greedy", instances=_row("greedy", max_new_tokens="ten")), "must be integers"),
            (dict(signature="greedy", instances=_row("greedy") * 65), "over the limit of 64"),
        ]
        for request, message in bad:
            with pytest.raises(ServingError) as err:
                client.predict(request["signature"], request["instances"])
            assert err.value.status == 400 and message in err.value.message, err.value.message
        with pytest.raises(ServingError, match="unknown model"):
            ServingClient(f"{url}", "other").status()
        import urllib.request

        req = urllib.request.Request(f"{url}/v1/models/tiny:predict", data=b"{oops", method="POST")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req)
        assert err.value.code == 400 and "malformed JSON" in json.loads(err.value.read())["error"]

        # A second version appears: the server switches to it without a restart.
        cwd = os.getcwd()
        os.chdir(root)
        try:
            assert main(["export", "--no-check", *args]) == 0
        finally:
            os.chdir(cwd)
        deadline = time.time() + 60
        while client.status()["model_version_status"][0]["version"] != "2":
            assert time.time() < deadline, "server did not pick up version 2"
            time.sleep(0.5)
        assert client.generate(["the"], method="greedy", max_new_tokens=3, min_new_tokens=3)[0]["lengths"] == 3
        v1 = ServingClient(f"{url}", "tiny", version=1)
        assert v1.generate(["the"], method="greedy", max_new_tokens=3, min_new_tokens=3)[0]["lengths"] == 3
        assert server.poll() is None  # alive after every bad request
    finally:
        server.terminate()
        server.wait(timeout=30)


def _row(method, **override):
    from serving.client import request_instances

    row = request_instances(["the"], method)[0]
    row.update(override)
    return [row]


def test_session_path_answers_every_signature_and_warmup_record(trained):
    """TF Serving's loading path (saver restore op + init op + tensor names): it failed on
    Keras 3 variables, whose inner tf.Variable the restore op never assigned."""
    root, _ = trained
    assert sorted(session_path_signatures(root / "export" / "tiny" / "1")) == sorted(SIGNATURES)


def _session_request(model, signature, **override):
    from serving.client import request_instances

    row = request_instances(["the cat"], signature)[0]
    row.update(override)
    return model.run(signature, {k: [v] for k, v in row.items()})


BAD_KNOBS = [  # (signature, knob values, the message's start); each is refused in the graph too
    ("beam_search", {"beam_width": 65}, "beam_width must be in [1, 64], got 65"),
    ("beam_search", {"beam_width": 2147483647}, "beam_width must be in [1, 64], got 2147483647"),
    ("beam_search", {"length_penalty": float("nan")}, "length_penalty must be in [-10, 10], got nan"),
    ("beam_search", {"length_penalty": -1e30}, "length_penalty must be in [-10, 10], got -1e+30"),
    ("sample", {"temperature": float("nan")}, "temperature must be in [1e-06, 1000000.0], got nan"),
    ("sample", {"temperature": 1e-45}, "temperature must be in [1e-06, 1000000.0], got 0"),  # TF prints the denormal as 0
    ("sample", {"temperature": 1e39}, "temperature must be in [1e-06, 1000000.0], got inf"),
    ("greedy", {"repetition_penalty": 0.0}, "repetition_penalty must be in [0.001, 1000.0], got 0"),
    ("greedy", {"repetition_penalty": -1.0}, "repetition_penalty must be in [0.001, 1000.0], got -1"),
    ("greedy", {"repetition_penalty": float("nan")}, "repetition_penalty must be in [0.001, 1000.0], got nan"),
    ("greedy", {"min_new_tokens": -1}, "min_new_tokens must be in [0, max_new_tokens], got -1"),
    ("greedy", {"min_new_tokens": 9, "max_new_tokens": 8}, "min_new_tokens must be in [0, max_new_tokens], got 9"),
    ("greedy", {"no_repeat_ngram_size": -1}, "no_repeat_ngram_size must be in [0, 8], got -1"),
    ("greedy", {"max_new_tokens": 41}, "max_new_tokens must be in [0, 40], got 41"),
    ("top_k", {"k": 0}, "k must be in [1, 2147483647], got 0"),
    ("top_p", {"p": 0.0}, "p must be in (0, 1], got 0"),
]


@pytest.mark.parametrize("signature, knobs, message", BAD_KNOBS, ids=[m.split(",")[0] for _, _, m in BAD_KNOBS])
def test_graph_refuses_bad_knobs_before_any_work(trained, signature, knobs, message):
    """TF Serving's clients have no REST layer of ours: the graph asserts every range, and
    the asserts run before tiling or looping (beam_width 2^31 - 1 fails at once)."""
    from serving.rest_api import graph_error

    root, _ = trained
    model = _session_model(root)
    started = time.perf_counter()
    with pytest.raises(tf.errors.InvalidArgumentError) as err:
        _session_request(model, signature, **knobs)
    # Not a speed check: without the early assert, beam_width 2^31 - 1 tiles the prompt that
    # many times and runs out of memory or time; the bound leaves room for the Session's
    # first-run graph optimisation on a loaded machine (measured 2.5 s).
    assert time.perf_counter() - started < 30.0
    refusal = graph_error(err.value)
    assert refusal.status == 400 and refusal.args[0] == message + " for prompt 0"


_SESSIONS = {}


def _session_model(root):
    from serving.saved_model_session import SessionModel

    path = str(root / "export" / "tiny" / "1")
    if path not in _SESSIONS:
        _SESSIONS[path] = SessionModel(path)
    return _SESSIONS[path]


def test_session_model_refuses_a_feed_of_the_wrong_shape_before_the_graph(trained):
    """The Session's callable does not check feed shapes, so SessionModel checks each
    against the SignatureDef (rank, and every fixed dimension) as Session.run did."""
    root, _ = trained
    model = _session_model(root)
    knobs = {"max_new_tokens": [2], "min_new_tokens": [0], "repetition_penalty": [1.0], "no_repeat_ngram_size": [0]}
    assert model.run("greedy", {"prompt": ["the"], **knobs})["lengths"].tolist() == [2]
    with pytest.raises(ValueError, match=re.escape(
            "Cannot feed value of shape (1, 2) for input 'prompt' of signature 'greedy', which has shape (None,)")):
        model.run("greedy", {"prompt": [["the", "cat"]], **knobs})
    with pytest.raises(ValueError, match=re.escape("input 'max_new_tokens' of signature 'greedy'")):
        model.run("greedy", {"prompt": ["the"], **knobs, "max_new_tokens": 2})


def test_a_prompt_over_max_prompt_tokens_is_refused_in_the_graph(trained):
    from serving.rest_api import graph_error

    root, _ = trained
    model = _session_model(root)
    assert _session_request(model, "greedy", prompt="the cat " * 30, max_new_tokens=2)["lengths"][0] == 2  # 60 tokens
    for signature, name in (("greedy", "prompt"), ("score", "text")):
        with pytest.raises(tf.errors.InvalidArgumentError) as err:
            if signature == "score":
                model.run("score", {"text": ["the"] * 3 + ["the cat " * 40]})
            else:
                _session_request(model, signature, prompt="the cat " * 40)
        assert graph_error(err.value).args[0] == (
            f"{name} {3 if signature == 'score' else 0} has 80 tokens, over the limit of 60 "
            "(export.max_prompt_tokens): shorten it")


@pytest.fixture(scope="module")
def served(trained):
    """`lmpipe serve` on the tiny export, with a 1 MiB body cap and a models.config that
    labels version 1 `stable`."""
    from serving.serving_config import write_models_config

    root, _ = trained
    config_dir = root / "served_config"
    config_dir.mkdir(exist_ok=True)
    write_models_config(str(config_dir), "tiny", stable=1)
    server, url, client, _ = start_lmpipe_serve(root / "export" / "tiny", "tiny", "--model-config-dir",
                                                str(config_dir), "--set", "serve.max_request_bytes=1048576")
    yield url, client
    assert server.poll() is None  # alive after every request of the module
    server.terminate()
    server.wait(timeout=30)


def _post(url, path, body: bytes, method="POST"):
    """(status, JSON body) of a raw request."""
    import urllib.request

    req = urllib.request.Request(url + path, data=body if method == "POST" else None, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.mark.slow
@pytest.mark.parametrize("signature, knobs, message", BAD_KNOBS, ids=[m.split(",")[0] for _, _, m in BAD_KNOBS])
def test_rest_refuses_bad_knobs_with_name_value_and_range(served, signature, knobs, message):
    _, client = served
    row = _row(signature, **knobs)
    with pytest.raises(ServingError) as err:
        client.predict(signature, row)
    expected = message
    if "1e-45" in repr(knobs):  # the REST layer prints the float32 the graph would get; TF prints 0
        expected = "temperature must be in [1e-06, 1000000.0], got 1.4013e-45"
    assert err.value.status == 400 and err.value.message == expected + " for prompt 0"


@pytest.mark.slow
def test_rest_bad_bodies_budget_and_paths(served):
    url, client = served
    greedy = json.dumps({"signature_name": "greedy", "instances": _row("greedy")}).encode()
    cases = [
        # (path, body, method, status, message start)
        ("/v1/models/tiny:predict", b"[" * 100_000, "POST", 400, "malformed JSON: the body nests"),
        ("/v1/models/tiny:predict", greedy.replace(b'"the"', b'"\\ud800"'), "POST", 400,
         "input 'prompt' of prompt 0 is not valid Unicode text"),
        ("/v1/models/tiny:predict", b" " * (1048576 + 1), "POST", 413,
         "the request body is over this server's limit of 1048576 bytes (serve.max_request_bytes)"),
        ("/v1/models/tiny:predict", json.dumps({"signature_name": "beam_search", "instances": _row(
            "beam_search", beam_width=64, max_new_tokens=40) * 64}).encode(), "POST", 400,
         "this request asks for 163840 token steps (64 prompts x beam width 64 x 40 max_new_tokens), over the "
         "compute budget of 65536 per request (serve.compute_budget)"),
        ("/v1/models/tiny:predict", b"", "GET", 400, "Malformed request: GET /v1/models/tiny:predict"),
        ("/v1/models/other:predict", greedy, "POST", 404, "Servable not found: unknown model 'other'"),
        ("/v1/models/tiny/versions/99:predict", greedy, "POST", 404, "Servable not found: model 'tiny' has no version 99"),
        ("/v1/models/tiny/versions/99", b"", "GET", 404, "Servable not found: model 'tiny' has no version 99"),
        ("/v1/models/tiny/labels/canary", b"", "GET", 400, "Unrecognized servable version label 'canary'"),
        ("/v1/models/tiny/oops", b"", "GET", 400, "Malformed request: GET /v1/models/tiny/oops"),
        ("/v1/models/tiny", b"{}", "POST", 400, "Malformed request: POST /v1/models/tiny"),
        ("/nowhere", b"", "GET", 404, "Not Found: GET /nowhere"),
    ]
    for path, body, method, status, message in cases:
        got_status, got = _post(url, path, body, method)
        assert (got_status, list(got)) == (status, ["error"]), (path, got_status, got)
        assert got["error"].startswith(message), (path, got["error"])
    # Status by label, as TF Serving serves it; and ordinary requests after all of the above.
    assert _post(url, "/v1/models/tiny/labels/stable", b"", "GET") == (200, {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]})
    assert client.generate(["the cat"], method="greedy", max_new_tokens=3)[0]["lengths"] == 3


@pytest.mark.slow
def test_status_answers_while_long_predictions_run(served):
    """Predictions run in worker threads, never on the event loop: status and metadata
    answer while the graph is busy with heavy requests."""
    import threading

    url, client = served
    heavy = _row("beam_search", beam_width=64, max_new_tokens=40, min_new_tokens=40, no_repeat_ngram_size=4) * 25
    done = []  # 64,000 token steps a request (in budget); 4 clients send 8 each

    def send():
        for _ in range(8):
            done.append(client.predict("beam_search", heavy))

    threads = [threading.Thread(target=send) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    waits = []
    for _ in range(5):
        started = time.perf_counter()
        assert client.status()["model_version_status"]
        client.metadata()
        waits.append(time.perf_counter() - started)
        time.sleep(0.05)
    busy = len(done) < 32
    for thread in threads:
        thread.join()
    assert busy, "the heavy requests ended before status was asked; make them heavier"
    assert max(waits) < 1.0, waits  # typically a few ms (bench/serve.py measures it)
    assert len(done) == 32 and len(done[0]["predictions"]) == 25


def test_unk_is_banned_unless_the_export_lets_it_through(trained):
    from pipeline.core.tokenizer import Tokenizer
    from serving.generation_module import GenerationModule
    from trainer.model_dir import load_trained_model

    root, _ = trained
    model_dir = next((root / "train").glob("*/model"))
    model, tokenizer = load_trained_model(str(model_dir)), Tokenizer.from_dir(str(model_dir))
    assert GenerationModule(model, tokenizer, 8).banned == (0, 2, 1)  # <pad>, <bos>, <unk>
    assert GenerationModule(model, tokenizer, 8, allow_unk=True).banned == (0, 2)


def test_streams_on_the_session_path_reproduce_every_sampling_signature(trained):
    """TF Serving has no streaming RPC: the client holds the decoder state and calls
    stream_start, then stream_next per token; the pieces join to the one-shot text."""
    from test_streaming import stream, stream_matches_one_shot

    root, _ = trained
    model = _session_model(root)
    prompts = ["the cat", "the cat number 3 sat on the", "on"]
    knobs = {"max_new_tokens": [12, 8, 12], "min_new_tokens": [0, 3, 0], "repetition_penalty": [1.0, 1.0, 1.3],
             "no_repeat_ngram_size": [0, 2, 0], "temperature": [1.0, 0.7, 1.4], "k": [3, 40, 5],
             "p": [0.9, 0.6, 0.95]}
    greedy = stream_matches_one_shot(model, "prompt", prompts, "greedy", **knobs, seed=[0, 0, 0])
    assert all(greedy)
    for method in ("sample", "top_k", "top_p"):
        for seed in (0, 4, 21):
            stream_matches_one_shot(model, "prompt", prompts, method, **knobs, seed=[seed, seed + 1, seed + 2])
    texts, _, _, width, calls = stream(model, "prompt", prompts, 0, **knobs, seed=[0, 0, 0])
    assert width == 4 + 2 * 24 + (60 + 1 + 40) and calls <= 12  # counters, (h, c), history


def test_stream_refuses_a_state_of_another_width_naming_the_expected_one(trained):
    from serving.rest_api import graph_error

    root, _ = trained
    model = _session_model(root)
    row = {"max_new_tokens": [4], "min_new_tokens": [0], "repetition_penalty": [1.0], "no_repeat_ngram_size": [0],
           "temperature": [1.0], "seed": [0], "k": [40], "p": [0.9], "method": [0]}
    start = model.run("stream_start", {"prompt": ["the cat"], **row})
    for state, step, message in [
        (start["state"][:, :10], 1, "state must have 153 columns (the stream state of this export, as stream_start "
                                    "and stream_next return it), got 10"),
        (start["state"], 40, "step must be in [0, 39], got 40 for prompt 0"),
    ]:
        with pytest.raises(tf.errors.InvalidArgumentError) as err:
            model.run("stream_next", {"state": state, "token": start["token"], "step": [step], **row})
        assert graph_error(err.value).args[0] == message
