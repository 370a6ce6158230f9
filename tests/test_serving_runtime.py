"""The serving runtime on TF Serving's terms: gRPC beside REST with the same answers and
errors, server-side batching where every row equals its request alone, Prometheus
metrics, and TF Serving's own files and command line."""

import threading
import urllib.request

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_metadata_pb2, get_model_status_pb2, model_pb2, model_service_pb2_grpc, predict_pb2,
    prediction_service_pb2_grpc,
)

from pipeline.orchestrate.cli import main
from serving.client import ServingError, connect, request_instances
from serving.generation_module import SIGNATURE_KNOBS

from conftest import start_lmpipe_serve
from test_export_serving import trained  # noqa: F401  (the tiny trained export, a module fixture)

REQUESTS = {  # signature -> prompts and knobs of one request
    "greedy": (["the cat", "on the mat 3"], {"max_new_tokens": 7}),
    "sample": (["the", "the cat number"], {"max_new_tokens": 6, "seed": 11, "temperature": 1.3}),
    "top_k": (["the cat"], {"max_new_tokens": 6, "seed": 3, "k": 4}),
    "top_p": (["on", "the cat sat", "mat"], {"max_new_tokens": 8, "seed": 5, "p": 0.8}),
    "beam_search": (["the cat"], {"max_new_tokens": 5, "beam_width": 3}),
}


@pytest.fixture(scope="module")
def servers(trained):  # noqa: F811
    """Two `lmpipe serve` processes on the tiny export: batching off, and batching on
    (a batch waits up to 200 ms for 16 rows)."""
    root, _ = trained
    base = root / "export" / "tiny"
    plain = start_lmpipe_serve(base, "tiny")
    batched = start_lmpipe_serve(base, "tiny", "--set", "serve.batching.enabled=true",
                                 "--set", "serve.batching.batch_timeout_micros=200000",
                                 "--set", "serve.batching.max_batch_size=16")
    yield plain, batched
    for server, *_ in (plain, batched):
        assert server.poll() is None
        server.terminate()
        server.wait(timeout=30)


def _stub(server):
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    return (prediction_service_pb2_grpc.PredictionServiceStub(channel),
            model_service_pb2_grpc.ModelServiceStub(channel))


def _grpc_request(signature, instances, name="tiny", dtypes=None):
    """A PredictRequest built as a TF Serving user builds it: TensorProtos by input name."""
    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=name, signature_name=signature))
    for key in instances[0]:
        request.inputs[key].CopyFrom(tf.make_tensor_proto([row[key] for row in instances], dtype=dtypes[key]))
    return request


def _grpc_predict(stub, signature, instances, name="tiny", dtypes=None):
    response = stub.Predict(_grpc_request(signature, instances, name, dtypes), timeout=60)
    return {key: tf.make_ndarray(proto) for key, proto in response.outputs.items()}


def _dtypes(stub):
    request = get_model_metadata_pb2.GetModelMetadataRequest(
        model_spec=model_pb2.ModelSpec(name="tiny"), metadata_field=["signature_def"])
    defs = get_model_metadata_pb2.SignatureDefMap()
    stub.GetModelMetadata(request, timeout=30).metadata["signature_def"].Unpack(defs)
    return {name: {k: v.dtype for k, v in sig.inputs.items()} for name, sig in defs.signature_def.items()}


@pytest.mark.slow
def test_grpc_answers_every_signature_as_rest_does(servers):
    (server, url, client, _), _ = servers
    prediction, models = _stub(server)
    dtypes = _dtypes(prediction)
    assert set(SIGNATURE_KNOBS) | {"score", "serving_default"} <= set(dtypes)
    cases = {name: request_instances(prompts, name, **knobs) for name, (prompts, knobs) in REQUESTS.items()}
    cases["score"] = [{"text": "the cat sat"}, {"text": "mat on the"}]
    for signature, instances in cases.items():
        over_grpc = _grpc_predict(prediction, signature, instances, dtypes=dtypes[signature])
        over_rest = client.predict(signature, instances)["predictions"]
        for row, expected in enumerate(over_rest):
            for key, value in expected.items():
                got = over_grpc[key][row]
                got = [g.decode() for g in got] if isinstance(value, list) and isinstance(value[0], str) else got
                got = got.decode() if isinstance(got, bytes) else got
                np.testing.assert_array_equal(np.asarray(got), np.asarray(value), err_msg=f"{signature} {key}")
    status = models.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(
        model_spec=model_pb2.ModelSpec(name="tiny")), timeout=30)
    assert status.model_version_status[0].state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
    # The client and lmpipe generate speak gRPC too.
    assert connect(f"grpc://127.0.0.1:{server.grpc_port}", "tiny").generate(["the cat"], "greedy", max_new_tokens=7) \
        == client.generate(["the cat"], "greedy", max_new_tokens=7)


@pytest.mark.slow
def test_grpc_errors_carry_rest_messages_and_tf_serving_codes(servers):
    (server, url, client, _), _ = servers
    prediction, _ = _stub(server)
    dtypes = _dtypes(prediction)
    cases = [
        ("top_k", request_instances(["the"], "top_k", k=0), "tiny", grpc.StatusCode.INVALID_ARGUMENT,
         "k must be in [1, 2147483647], got 0 for prompt 0"),
        ("greedy", request_instances(["the"], "greedy"), "other", grpc.StatusCode.NOT_FOUND,
         "Servable not found: unknown model 'other'; this server serves 'tiny'"),
        ("greedy", request_instances(["the cat " * 40], "greedy"), "tiny", grpc.StatusCode.INVALID_ARGUMENT,
         "prompt 0 has 80 tokens, over the limit of 60 (export.max_prompt_tokens): shorten it"),
        ("nope", request_instances(["the"], "greedy"), "tiny", grpc.StatusCode.INVALID_ARGUMENT,
         "unknown signature 'nope'"),
    ]
    for signature, instances, name, code, message in cases:
        with pytest.raises(grpc.RpcError) as err:
            _grpc_predict(prediction, signature, instances, name=name, dtypes=dtypes.get(signature, dtypes["greedy"]))
        assert err.value.code() == code and err.value.details().startswith(message), err.value.details()
        if name == "tiny":
            with pytest.raises(ServingError) as rest:
                client.predict(signature, instances)
            assert rest.value.message == err.value.details()
    # Our client sends arrays as arrays of the input's dtype, and refuses to truncate one.
    grpc_client = connect(f"grpc://127.0.0.1:{server.grpc_port}", "tiny")
    with pytest.raises(ValueError, match="input 'max_new_tokens' of greedy must be int32, got an array of float64"):
        grpc_client.predict("greedy", inputs={"prompt": ["the"], "max_new_tokens": np.array([1.5])})
    with pytest.raises(ValueError, match=r"input 'max_new_tokens' of greedy is out of range for int32"):
        grpc_client.predict("greedy", inputs={"prompt": ["the"], "max_new_tokens": np.array([2**40])})


def test_grpc_refuses_a_shape_its_values_do_not_fill_before_allocating_it(servers):
    """A TensorProto fills its shape from its last value: 2^40 prompts in a 40-byte request
    would ask for 8 TB. It is refused by name, and the server stays up (checked at teardown)."""
    (server, *_), _ = servers
    prediction, _ = _stub(server)
    request = _grpc_request("greedy", request_instances(["the"], "greedy"), dtypes=_dtypes(prediction)["greedy"])
    request.inputs["prompt"].tensor_shape.dim[0].size = 2**40
    with pytest.raises(grpc.RpcError) as err:
        prediction.Predict(request, timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == ("input 'prompt' has shape [1099511627776] (1,099,511,627,776 values); a request "
                                   "may hold at most 8,388,608 values an input (serve.max_request_bytes): "
                                   "send fewer or shorter rows")
    request.inputs["prompt"].tensor_shape.dim[0].size = 1  # the same request, well formed, is answered
    assert prediction.Predict(request, timeout=60).outputs["text"].string_val


@pytest.mark.slow
def test_batched_rows_equal_each_request_alone_for_every_signature(servers):
    (_, _, alone, _), (batched_server, batched_url, batched, _) = servers
    cases = {name: request_instances(prompts, name, **knobs) for name, (prompts, knobs) in REQUESTS.items()}
    cases["score"] = [{"text": "the cat sat"}, {"text": "mat on the number 4"}]
    for signature, instances in cases.items():
        requests = [instances, [dict(r, **({"seed": 99} if "seed" in r else {})) for r in instances[:1]],
                    list(reversed(instances))]
        expected = [alone.predict(signature, r)["predictions"] for r in requests]
        answers = [None] * len(requests)

        def send(i):
            answers[i] = batched.predict(signature, requests[i])["predictions"]

        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(requests))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for got_rows, want_rows in zip(answers, expected):
            for got, want in zip(got_rows, want_rows):
                _assert_same_row(got, want, signature)
    metrics = urllib.request.urlopen(f"{batched_url}/monitoring/prometheus/metrics").read().decode()
    sizes = {line.split("{")[0]: line for line in metrics.splitlines()
             if line.startswith(":tensorflow:serving:batching_session:processed_batch_size_count")}
    assert sizes  # the batched server merged the concurrent requests:
    assert _metric(metrics, "processed_batch_size_sum", "greedy") >= 5  # 2 + 1 + 2 rows in one run
    assert _metric(metrics, "processed_batch_size_count", "greedy") == 1


def _metric(text, name, signature):
    for line in text.splitlines():
        if name in line and f'signature_name="{signature}"' in line and not line.startswith("#"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} for {signature}")


def _assert_same_row(got: dict, want: dict, signature: str):
    """A batched row equals the row alone: text, lengths exactly; tokens up to each length
    (a batch pads to its longest); log-probabilities to float32 rounding."""
    assert got["text"] == want["text"] if "text" in want else True, signature
    for key in ("lengths", "tokens"):
        if key in want:
            assert got[key] == want[key], (signature, key)
    for key in ("log_prob", "perplexity"):
        if key in want:
            np.testing.assert_allclose(got[key], want[key], rtol=1e-5, err_msg=f"{signature} {key}")
    if "token_ids" in want:
        lengths = np.atleast_1d(want["lengths"])
        got_ids, want_ids = np.atleast_2d(got["token_ids"]), np.atleast_2d(want["token_ids"])
        for beam, n in enumerate(lengths):
            assert got_ids[beam][:n].tolist() == want_ids[beam][:n].tolist(), signature


@pytest.mark.slow
def test_metrics_count_requests_by_status_and_model_loads(servers):
    (server, url, client, _), _ = servers
    client.generate(["the cat"], "greedy", max_new_tokens=3)
    with pytest.raises(ServingError):
        client.generate(["the"], "top_k", k=0)
    with urllib.request.urlopen(f"{url}/monitoring/prometheus/metrics") as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    ok = [l for l in text.splitlines() if l.startswith(":tensorflow:serving:request_count_total{")
          and 'API="rest"' in l and 'signature_name="greedy"' in l and 'status="OK"' in l]
    refused = [l for l in text.splitlines() if l.startswith(":tensorflow:serving:request_count_total{")
               and 'signature_name="top_k"' in l and 'status="INVALID_ARGUMENT"' in l]
    assert ok and float(ok[0].rsplit(" ", 1)[1]) >= 1 and refused
    assert ":lmpipe:serving:tokens_generated_total{" in text
    assert ':tensorflow:cc:saved_model:load_attempt_count_total{model_name="tiny"' in text
    assert ":tensorflow:serving:request_latency_bucket{" in text


def test_tf_serving_command_and_files(tmp_path, capsys):
    from serving.batching import BatchingParameters
    from serving.serving_config import write_serving_files

    assert main(["serve", "--print-tf-serving-command", "--set", f"export.base_path={tmp_path}",
                 "--set", "serve.batching.enabled=true"]) == 0
    command = capsys.readouterr().out
    for flag in ("--port=8500", "--rest_api_port=8501", f"--model_config_file={tmp_path}/models.config",
                 "--enable_batching", f"--batching_parameters_file={tmp_path}/batching_parameters.txt",
                 f"--monitoring_config_file={tmp_path}/monitoring_config.txt"):
        assert flag in command
    files = write_serving_files(str(tmp_path), BatchingParameters())
    assert open(files["monitoring_config.txt"]).read() == (
        'prometheus_config {\n  enable: true\n  path: "/monitoring/prometheus/metrics"\n}\n')
    assert open(files["batching_parameters.txt"]).read().startswith("max_batch_size { value: 64 }\n")


@pytest.mark.slow
def test_streams_join_to_the_one_shot_text_over_sse_rest_and_grpc(servers, trained):  # noqa: F811
    """lmpipe serve's :generate_stream (SSE), the stream signatures through plain REST
    Predict calls (what any TF Serving offers) and through gRPC: one event per token, then
    the whole text; the pieces join to the one-shot signature's text."""
    (server, url, client, _), (_, _, batched, _) = servers
    grpc_client = connect(f"grpc://127.0.0.1:{server.grpc_port}", "tiny")
    for method, (prompts, knobs) in REQUESTS.items():
        if method == "beam_search":
            continue
        expected = client.generate(prompts, method, **knobs)
        for name, events in [("sse", client.stream_sse(prompts, method, **knobs)),
                             ("sse batched", batched.stream_sse(prompts, method, **knobs)),
                             ("rest signatures", client.stream(prompts, method, **knobs)),
                             ("grpc signatures", grpc_client.stream(prompts, method, **knobs))]:
            events = list(events)
            finals = {e["index"]: e for e in events if e.get("done")}
            assert sorted(finals) == list(range(len(prompts))), (method, name)
            for row, want in enumerate(expected):
                pieces = [e["piece"] for e in events if e["index"] == row and not e.get("done")]
                assert "".join(pieces) == finals[row]["text"] == want["text"], (method, name, row)
                assert finals[row]["tokens"] == len(pieces) == want["lengths"], (method, name)
                assert finals[row]["log_prob"] == pytest.approx(want["log_prob"], rel=1e-5)
                assert finals[row]["stop_reason"] == ("eos" if want["token_ids"][want["lengths"] - 1] == 3
                                                      else "max_new_tokens")
    with pytest.raises(ServingError, match="streaming decodes with one of"):
        list(client.stream_sse(["the"], "beam_search"))


@pytest.mark.slow
def test_generate_stream_on_the_command_line(servers, trained, capsys):  # noqa: F811
    (server, url, client, _), _ = servers
    root, _ = trained
    expected = client.generate(["the cat"], "top_p", max_new_tokens=6, seed=4)[0]["text"]
    for where in (["--url", url], ["--url", f"grpc://127.0.0.1:{server.grpc_port}"],
                  ["--export-dir", str(root / "export" / "tiny" / "1")]):
        capsys.readouterr()
        assert main(["generate", *where, "--model", "tiny", "--stream", "--method", "top_p", "--seed", "4",
                     "--max-new-tokens", "6", "the cat"]) == 0
        out = capsys.readouterr().out.splitlines()
        assert out[0] == expected and out[1].startswith(f"the cat -> {expected}    (log p = "), (where, out)
