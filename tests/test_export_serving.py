"""Train a tiny model, export it, prove it TF-Serving-ready, serve it over REST, switch versions."""

import json
import os
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from pipeline.cli import main
from serving.check_export import check_export
from serving.client import ServingClient, ServingError
from serving.generation_module import SIGNATURE_KNOBS
from serving.warmup import read_warmup_requests

from conftest import start_lmpipe_serve, write

SIGNATURES = {"greedy", "beam_search", "sample", "top_k", "top_p", "score", "serving_default"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    text = "".join(f"the cat number {i % 7} sat on the mat {i % 5} .\n" for i in range(400))
    corpus = write(root / "corpus.txt", text)
    args = ["--set", f"data.train={corpus}", "--set", "data.format=lines",
            "--set", f"preprocess.output_dir={root / 'data'}", "--set", f"train.output_dir={root / 'train'}",
            "--set", f"export.base_path={root / 'export'}", "--set", "export.model_name=tiny",
            "--set", "export.max_new_tokens=40",
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
        assert client.generate(["the"], method="greedy", max_new_tokens=3)[0]["lengths"] >= 1
        v1 = ServingClient(f"{url}", "tiny", version=1)
        assert v1.generate(["the"], method="greedy", max_new_tokens=3)[0]["lengths"] >= 1
        assert server.poll() is None  # alive after every bad request
    finally:
        server.terminate()
        server.wait(timeout=30)


def _row(method, **override):
    from serving.client import request_instances

    row = request_instances(["the"], method)[0]
    row.update(override)
    return [row]
