"""Registered versions as MLflow Models: the export's SavedModel behind `mlflow.pyfunc`,
`mlflow models serve`, LoggedModel metrics and datasets, and a registry that agrees with
TF Serving's layout (`lmpipe run` on a tiny corpus, SQLite tracking; the HTTP server and
the seq2seq model at the end)."""

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import mlflow
import pytest
import tensorflow as tf
import tensorflow_text
from mlflow import MlflowClient

from pipeline.orchestrate.cli import main
from serving.knobs import KNOB_SPECS
from serving.mlflow_model import saved_model_of
from serving.serving_config import read_models_config

from conftest import free_ports, pyfunc_in_clean_process, run_corpus, session_texts, write
from conftest import run_args as _conftest_run_args

PROMPTS = ["the cat", "on mat 3"]


def _args(root, *extra):
    return _conftest_run_args(root, "--set", "tracking.system_metrics_interval_s=0.2", *extra)


def _manifest(root):
    return json.load(open(root / "runs" / "manifests" / "latest.json"))


@pytest.fixture(scope="module")
def champion(tmp_path_factory):
    """One `lmpipe run`: (root, tracking URI, manifest)."""
    root = tmp_path_factory.mktemp("mlflow-models")
    run_corpus(root)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert main(["run", *_args(root)]) == 0
    finally:
        os.chdir(cwd)
    return root, f"sqlite:///{root}/mlflow.db", _manifest(root)


def test_the_registered_version_is_the_export_as_an_mlflow_model(champion):
    root, uri, manifest = champion
    version = MlflowClient(uri).get_model_version_by_alias("lm", "champion")
    assert version.source.startswith("models:/m-") and version.run_id == manifest["mlflow_run_id"]
    export = root / "export" / "lm" / str(manifest["export_version"])
    assert version.tags["export_version"] == str(manifest["export_version"])
    assert version.tags["export_path"] == str(export) == manifest["export_path"]
    local = mlflow.artifacts.download_artifacts(version.source, tracking_uri=uri)
    saved_model = saved_model_of(local)
    for name in ("saved_model.pb", "assets/vocab.txt", "assets.extra/tf_serving_warmup_requests"):
        assert open(os.path.join(saved_model, name), "rb").read() == open(export / name, "rb").read(), name
    requirements = open(os.path.join(local, "requirements.txt")).read().split()
    assert f"tensorflow=={tf.__version__}" in requirements
    assert f"tensorflow-text=={tensorflow_text.__version__}" in requirements
    assert not [r for r in requirements if "lmpipe" in r]
    signature = mlflow.models.get_model_info(f"models:/lm/{version.version}").signature
    assert [c.type.name for c in signature.inputs.inputs] == ["string"]
    assert signature.outputs.input_names() == ["text"]
    defaults = {p.name: p.default for p in signature.params.params}
    assert defaults == {"method": "top_p", **{k: default for k, (_, default) in KNOB_SPECS.items()}}


def test_pyfunc_in_a_clean_process_answers_like_tf_serving(champion):
    root, uri, manifest = champion
    calls = [{"method": "beam_search", "beam_width": 4}, {"method": "greedy", "max_new_tokens": 7},
             {"method": "sample", "seed": 5, "temperature": 1.5}, {"method": "top_k", "k": 3, "seed": 2},
             {"method": "top_p", "p": 0.7, "seed": 9}, {}]
    answers = pyfunc_in_clean_process("models:/lm@champion", uri, PROMPTS, calls)
    export = manifest["export_path"]
    expected = [session_texts(export, "beam_search", PROMPTS, beam_width=4),
                session_texts(export, "greedy", PROMPTS, max_new_tokens=7),
                session_texts(export, "sample", PROMPTS, seed=5, temperature=1.5),
                session_texts(export, "top_k", PROMPTS, k=3, seed=2),
                session_texts(export, "top_p", PROMPTS, p=0.7, seed=9),
                session_texts(export, "top_p", PROMPTS)]  # no params: the export's default signature
    assert answers == expected


def test_pyfunc_refuses_bad_requests_with_the_reason(champion):
    _, uri, _ = champion
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model("models:/lm@champion")
    cases = [
        (PROMPTS, {"method": "score"}, "method must be one of greedy, sample, top_k, top_p, beam_search, got 'score'"),
        (PROMPTS, {"method": "top_k", "k": 0}, "k must be in [1, 2147483647], got 0 for prompt 0"),
        (PROMPTS, {"max_new_tokens": 300}, "max_new_tokens must be in [0, 256], got 300 for prompt 0"),
        (PROMPTS * 3, {"method": "beam_search", "beam_width": 64, "max_new_tokens": 256},
         "the request asks for 6 prompts x 64 beams x 256 new tokens = 98304, over the compute budget of 65536 "
         "(serve.compute_budget): ask for fewer"),
        (PROMPTS * 40, {}, "80 prompts in one request, over the limit of 64 (serve.max_batch_size): split the request"),
    ]
    for texts, params, message in cases:
        with pytest.raises(mlflow.exceptions.MlflowException) as err:
            model.predict(texts, params=params)
        assert message in str(err.value), (params, str(err.value))


def test_logged_model_metrics_rank_models_and_name_their_data(champion):
    root, uri, manifest = champion
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    version = client.get_model_version_by_alias("lm", "champion")
    experiment = client.get_run(version.run_id).info.experiment_id
    (model,) = mlflow.search_logged_models(experiment_ids=[experiment], output_format="list",
                                           order_by=[{"field_name": "metrics.test_ppl", "ascending": True}])
    assert model.model_id == version.tags["model_id"] and model.source_run_id == version.run_id
    trained = json.load(open(os.path.join(manifest["model_dir"], "metrics.json")))
    fingerprint = trained["fingerprint"]
    linked = {m.key: (m.value, m.dataset_name, m.dataset_digest) for m in model.metrics}
    assert linked == {
        "valid_ppl": (trained["valid_ppl"], f"{fingerprint[:16]}-valid", fingerprint[:36]),
        "valid_loss": (trained["valid_loss"], f"{fingerprint[:16]}-valid", fingerprint[:36]),
        "test_ppl": (trained["test_ppl"], f"{fingerprint[:16]}-test", fingerprint[:36]),
        "test_loss": (trained["test_loss"], f"{fingerprint[:16]}-test", fingerprint[:36]),
        "test_bits_per_token": (trained["test_bits_per_token"], f"{fingerprint[:16]}-test", fingerprint[:36]),
    }
    assert model.params["model.hidden_dim"] == "16"
    run = client.get_run(version.run_id)
    contexts = {d.dataset.name: [t.value for t in d.tags] for d in run.inputs.dataset_inputs}
    assert contexts == {f"{fingerprint[:16]}-train": ["training"], f"{fingerprint[:16]}-valid": ["validation"],
                        f"{fingerprint[:16]}-test": ["testing"]}
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(run.data.metrics)


def test_champion_and_stable_label_agree_and_old_versions_stay_usable(tmp_path, capsys):
    run_corpus(tmp_path)
    assert main(["run", *_args(tmp_path)]) == 0  # v1: champion, export 1
    run_corpus(tmp_path, files=1, offset=5)
    worse = _args(tmp_path, "--set", "train.learning_rate=0.00001")
    assert main(["run", *worse]) == 10  # v2: challenger, export 2
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    assert read_models_config(str(tmp_path / "export"))["labels"] == {"stable": 1}
    # Two LoggedModels now: search_logged_models ranks them by their linked test perplexity.
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    ranked = mlflow.search_logged_models(output_format="list", order_by=[
        {"field_name": "metrics.test_ppl", "ascending": True}], experiment_ids=[
        client.get_run(client.get_model_version("lm", "1").run_id).info.experiment_id])
    ppl = {client.get_model_version("lm", v).tags["model_id"]: float(client.get_model_version("lm", v).tags["test_ppl"])
           for v in ("1", "2")}
    assert [m.model_id for m in ranked] == sorted(ppl, key=ppl.get) and ppl[ranked[0].model_id] < ppl[ranked[1].model_id]

    # A champion set by hand in MLflow is what the next run serves.
    client.set_registered_model_alias("lm", "champion", "2")
    assert main(["run", *worse]) == 0
    assert _manifest(tmp_path)["decision"] == "nothing_new"
    assert read_models_config(str(tmp_path / "export"))["labels"] == {"stable": 2}

    # One whose export is gone is reported, and models.config keeps serving what it served.
    os.rename(tmp_path / "export" / "lm" / "2", tmp_path / "moved-2")
    capsys.readouterr()
    assert main(["run", *worse]) == 0
    problem = _manifest(tmp_path)["deploy_problem"]
    assert problem == (f"champion lm v2 names export version 2, which is not in {tmp_path / 'export' / 'lm'} "
                       "(pruned or deleted); write one with: lmpipe export --from models:/lm@champion")
    assert problem in capsys.readouterr().err
    assert read_models_config(str(tmp_path / "export"))["labels"] == {"stable": 2}

    # lmpipe export --from writes the registered SavedModel as a new TF Serving version.
    assert main(["export", "--from", "models:/lm@champion", "--no-check", *worse]) == 0
    copied = tmp_path / "export" / "lm" / "2"  # the next free version number
    assert (copied / "saved_model.pb").read_bytes() == (tmp_path / "moved-2" / "saved_model.pb").read_bytes()
    assert client.get_model_version("lm", "2").tags["export_path"] == str(copied)
    assert main(["run", *worse]) == 0
    assert "deploy_problem" not in _manifest(tmp_path)
    assert read_models_config(str(tmp_path / "export"))["labels"] == {"stable": 2}

    # A version registered before MLflow models (its source the Keras model folder) ...
    run_id = client.get_model_version("lm", "1").run_id
    old = client.create_model_version("lm", f"{client.get_run(run_id).info.artifact_uri}/model", run_id=run_id,
                                      tags={"run_key": "old-key", "export_version": "1"})
    client.set_registered_model_alias("lm", "champion", old.version)
    assert main(["run", *worse]) in (0, 10)  # ... is read as the champion, never crashed on,
    note = _manifest(tmp_path)["champion_note"]
    assert note.startswith(f"lm v{old.version} was registered before MLflow models (its source has no MLmodel)")
    capsys.readouterr()
    assert main(["export", "--from", f"models:/lm/{old.version}", "--no-check", *worse]) == 0  # and exports
    assert f"exported lm v{old.version} as version 3 (exported from its Keras model folder)" in capsys.readouterr().out
    assert os.path.exists(tmp_path / "export" / "lm" / "3" / "saved_model.pb")


def test_export_from_a_bad_uri_names_the_fix(tmp_path, capsys):
    run_corpus(tmp_path)
    args = _args(tmp_path)
    assert main(["export", "--from", "runs:/abc/model", *args]) == 3
    assert "is not a registry URI; give models:/<name>@<alias> or models:/<name>/<version>" in capsys.readouterr().err
    assert main(["export", "--from", "models:/lm@nobody", *args]) == 3
    assert "models:/lm@nobody names no registered version" in capsys.readouterr().err


@pytest.mark.slow
def test_mlflow_models_serve_answers_invocations(champion):
    root, uri, manifest = champion
    port = free_ports()[0]
    bin_dir = os.path.dirname(sys.executable)
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": bin_dir + os.pathsep + os.environ["PATH"]}
    proc = subprocess.Popen([os.path.join(bin_dir, "mlflow"), "models", "serve", "-m", "models:/lm@champion",
                             "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(url + "/ping", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail("mlflow models serve did not answer /ping in 120 s: "
                                + proc.stderr.read().decode()[-2000:] if proc.poll() is not None else "still starting")
                time.sleep(0.5)
        body = {"inputs": PROMPTS, "params": {"method": "beam_search", "beam_width": 3, "max_new_tokens": 6}}
        answer = _post(url + "/invocations", body)
        expected = session_texts(manifest["export_path"], "beam_search", PROMPTS, beam_width=3, max_new_tokens=6)
        assert answer == {"predictions": [{"text": t} for t in expected]}
        frame = {"dataframe_split": {"columns": ["prompt"], "data": [[PROMPTS[0]]]}}
        assert _post(url + "/invocations", frame) == {
            "predictions": [{"text": session_texts(manifest["export_path"], "top_p", PROMPTS[:1])[0]}]}
        with pytest.raises(urllib.error.HTTPError) as err:
            _post(url + "/invocations", {"inputs": PROMPTS, "params": {"method": "top_p", "p": 1.5}})
        assert err.value.code == 400
        assert "p must be in (0, 1], got 1.5 for prompt 0" in json.loads(err.value.read())["message"]
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()


def _post(url, body):
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_seq2seq_model_over_an_mlflow_server(tmp_path, mlflow_server):
    uri, _ = mlflow_server
    words = ["red", "green", "blue", "cat", "dog", "sun"]
    args = ["--set", "data.format=pairs", "--set", "model.kind=seq2seq", "--set", "model.embedding_dim=16",
            "--set", "model.hidden_dim=16", "--set", "model.num_layers=1", "--set", "model.dropout=0.0",
            "--set", "train.optimizer=adam", "--set", "train.learning_rate=0.01", "--set", "train.batch_size=16",
            "--set", "train.epochs=1", "--set", "export.max_new_tokens=12",
            "--set", f"preprocess.output_dir={tmp_path / 'data'}", "--set", f"train.output_dir={tmp_path / 'train'}",
            "--set", f"export.base_path={tmp_path / 'export'}", "--set", f"tracking.uri={uri}",
            "--set", "tracking.registered_model=tiny-s2s", "--set", "tracking.system_metrics=false"]
    for split, count in (("train", 200), ("valid", 20), ("test", 20)):
        sources = [" ".join(words[(i + j) % 6] for j in range(3 + i % 3)) for i in range(count)]
        args += ["--set", f"data.source_{split}=" + write(tmp_path / f"{split}.src", "\n".join(sources) + "\n"),
                 "--set", f"data.target_{split}=" + write(tmp_path / f"{split}.tgt", "\n".join(
                     " ".join(reversed(s.split())) for s in sources) + "\n")]
    assert main(["preprocess", *args]) == 0
    assert main(["train", *args]) == 0
    assert main(["export", "--no-check", *args]) == 0
    client = MlflowClient(uri)
    (version,) = client.search_model_versions("name='tiny-s2s'")
    signature = mlflow.models.get_model_info(f"models:/tiny-s2s/{version.version}").signature
    defaults = {p.name: p.default for p in signature.params.params}
    assert defaults["method"] == "top_p" and defaults["max_new_tokens"] == 12  # within export.max_new_tokens
    sources = ["red green blue", "cat dog sun red"]
    calls = [{"method": "greedy"}, {"method": "beam_search", "beam_width": 2}, {"method": "sample", "seed": 4}]
    export = version.tags["export_path"]
    assert pyfunc_in_clean_process(f"models:/tiny-s2s/{version.version}", uri, sources, calls) == [
        session_texts(export, "greedy", sources, max_new_tokens=12),
        session_texts(export, "beam_search", sources, beam_width=2, max_new_tokens=12),
        session_texts(export, "sample", sources, seed=4, max_new_tokens=12)]
    model = client.get_logged_model(version.tags["model_id"])
    assert {m.key for m in model.metrics} == {"valid_ppl", "valid_loss", "test_ppl", "test_loss", "test_bits_per_token"}
