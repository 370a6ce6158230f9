"""A sequence-to-sequence model through every stage: `lmpipe run` on a pairs corpus
(a word-reversal task), its export under the serving contract, and its reports."""

import json
import os

import numpy as np
import pytest

from pipeline.orchestrate.cli import main

from conftest import session_path_signatures, start_lmpipe_serve, write

SIGNATURES = ["beam_search", "greedy", "sample", "score", "serving_default", "stream_next", "stream_start", "top_k",
              "top_p"]

WORDS = ["red", "green", "blue", "cat", "dog", "sun", "moon", "tree"]


def _reversal_corpus(root, seed=0):
    rng = np.random.default_rng(seed)
    files = {}
    for split, count in (("train", 1500), ("valid", 60), ("test", 60)):
        sources = [" ".join(rng.choice(WORDS, rng.integers(3, 6))) for _ in range(count)]
        targets = [" ".join(reversed(s.split())) for s in sources]
        files[f"data.source_{split}"] = write(root / "corpus" / f"{split}.src", "\n".join(sources) + "\n")
        files[f"data.target_{split}"] = write(root / "corpus" / f"{split}.tgt", "\n".join(targets) + "\n")
    return files


def _args(root, files, *extra):
    args = ["--set", "data.format=pairs", "--set", "model.kind=seq2seq",
            "--set", "model.embedding_dim=32", "--set", "model.hidden_dim=48", "--set", "model.num_layers=1",
            "--set", "model.bidirectional_encoder=true", "--set", "model.dropout=0.0",
            "--set", "train.optimizer=adam", "--set", "train.learning_rate=0.01", "--set", "train.batch_size=32",
            "--set", "train.epochs=8", "--set", "export.max_new_tokens=20",
            "--set", f"preprocess.output_dir={root / 'data'}", "--set", f"train.output_dir={root / 'train'}",
            "--set", f"export.base_path={root / 'export'}", "--set", f"run.work_dir={root / 'runs'}",
            "--set", f"tracking.uri=sqlite:///{root}/mlflow.db"]
    for key, path in files.items():
        args += ["--set", f"{key}={path}"]
    return args + list(extra)


@pytest.mark.slow
def test_lmpipe_run_trains_exports_and_promotes_a_seq2seq_model(tmp_path, capsys):
    files = _reversal_corpus(tmp_path)
    assert main(["run", *_args(tmp_path, files)]) == 0
    manifest = json.load(open(sorted((tmp_path / "runs" / "manifests").glob("*.json"))[-1]))
    assert manifest["decision"] == "promoted"
    stages = {s["stage"]: s for s in manifest["stages"]}
    assert stages["evaluate"]["metric"] == "test_bleu_greedy" and stages["evaluate"]["new"] > 90
    assert "tok:none" in stages["evaluate"]["bleu_signature"]
    assert stages["export"]["check_ok"], stages["export"]["problems"]
    # The serving gate replayed every warmup record in TF Serving's Session path...
    assert sorted(r["signature"] for r in stages["export"]["warmup_records"]) == SIGNATURES
    # ...and so does this process, each answer equal to tf.saved_model.load's.
    assert sorted(session_path_signatures(stages["export"]["path"])) == SIGNATURES
    from serving.rest_api import BadRequest
    from serving.local_predict import predict_local

    with pytest.raises(BadRequest, match=r"^source 0 has 1025 tokens, over the limit of 1024 "):
        predict_local(stages["export"]["path"], "greedy", [{"source": "red " * 1024, "max_new_tokens": 4,
                                                            "min_new_tokens": 0, "repetition_penalty": 1.0,
                                                            "no_repeat_ngram_size": 0}])
    report = os.path.join(stages["report"]["folder"])
    assert {"bleu.json", "samples.csv", "attention_0.png"} <= set(os.listdir(report))
    bleu = json.load(open(os.path.join(report, "bleu.json")))
    assert bleu["test"]["greedy"]["bleu"] > 90 and bleu["test"]["beam_search"]["bleu"] > 90

    # The MLflow run holds the BLEU metrics; the registry version the decision.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.get_run(manifest["mlflow_run_id"])
    assert run.data.metrics["test_bleu_greedy"] == pytest.approx(bleu["test"]["greedy"]["bleu"])
    # ... and the registered version is the export as an MLflow Model, its BLEU linked to it.
    version = client.get_model_version("lmpipe-lm", manifest["registered_version"])
    assert version.source.startswith("models:/m-") and version.tags["export_path"] == stages["export"]["path"]
    model = client.get_logged_model(version.tags["model_id"])
    linked = {m.key: m.value for m in model.metrics}
    assert linked["test_bleu_greedy"] == pytest.approx(stages["evaluate"]["new"])
    assert {"valid_ppl", "test_ppl"} <= set(linked)

    # The export answers raw source strings in a process of its own (TF Serving's contract).
    from serving.local_predict import predict_local

    export = stages["export"]["path"]
    rows = predict_local(export, "greedy", [{"source": "red cat moon", "max_new_tokens": 10, "min_new_tokens": 0,
                                             "repetition_penalty": 1.0, "no_repeat_ngram_size": 0}])
    assert rows[0]["text"] == "moon cat red"
    attention = np.array(rows[0]["attention"])  # [T_out, T_in]: 3 words + <eos> over 3 words + <eos>
    assert attention.shape == (len(rows[0]["token_ids"]), 4)  # the output's padded width x (3 words + <eos>)
    np.testing.assert_array_equal(attention[rows[0]["lengths"]:], 0.0)  # rows past the output's length
    np.testing.assert_allclose(attention[:rows[0]["lengths"]].sum(axis=1), 1.0, atol=1e-5)
    assert np.argmax(attention[0]) == 2  # the first output word looks at the last source word

    _rest_server_translates(os.path.dirname(export))
    assert main(["report", "decoding", *_args(tmp_path, files)]) == 2  # a language-model report: says which fit

    capsys.readouterr()
    assert main(["generate", "--export-dir", export, "--method", "beam_search", "--beam-width", "3", "--max-new-tokens", "10",
                 "green dog sun tree"]) == 0
    assert "green dog sun tree -> tree sun dog green" in capsys.readouterr().out


def _rest_server_translates(model_base):
    """`lmpipe serve` answers the seq2seq signatures over TF Serving's REST API."""
    server, _, client, _ = start_lmpipe_serve(model_base, os.path.basename(model_base))
    try:
        defs = client.metadata()["metadata"]["signature_def"]["signature_def"]
        assert "source" in defs["greedy"]["inputs"] and "attention" in defs["greedy"]["outputs"]
        (greedy,) = client.generate(["sun tree red"], method="greedy", max_new_tokens=10)
        assert greedy["text"] == "red tree sun" and greedy["lengths"] == 4  # 3 words + <eos>
        assert len(greedy["attention"]) == 10 and not any(greedy["attention"][4])  # dense, zero-padded
        for method in ("sample", "top_k", "top_p", "beam_search"):
            knobs = {"beam_width": 2} if method == "beam_search" else {"seed": 1, "temperature": 0.5}
            (pred,) = client.generate(["moon dog"], method=method, max_new_tokens=6, **knobs)
            assert pred["text"], method
        scored = client.predict("score", [{"source": "red cat", "target": "cat red"}])["predictions"][0]
        assert scored["tokens"] == 3 and scored["perplexity"] < 1.5  # 2 words + <eos>, well learned
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_seq2seq_config_needs_pairs_data():
    from pipeline.core.config_loader import load_config
    from pipeline.core.errors import ConfigError

    with pytest.raises(ConfigError, match="model.kind seq2seq learns from pairs of texts"):
        load_config(None, ["model.kind=seq2seq"])


def test_training_a_language_model_on_pairs_says_what_to_set(tmp_path):
    files = {"data.source_train": write(tmp_path / "s.txt", "a b\nc d\n" * 20),
             "data.target_train": write(tmp_path / "t.txt", "b a\nd c\n" * 20)}
    args = ["--set", "data.format=pairs", "--set", f"preprocess.output_dir={tmp_path / 'data'}",
            "--set", f"train.output_dir={tmp_path / 'train'}", "--set", f"tracking.uri=sqlite:///{tmp_path}/m.db"]
    for key, path in files.items():
        args += ["--set", f"{key}={path}"]
    assert main(["preprocess", *args]) == 0
    assert main(["train", *args]) == 3  # InputDataError: one line naming model.kind
