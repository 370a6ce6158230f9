"""Insight reports on tiny models: exact n-gram statistics, files written, sane numbers."""

import json
import os

import keras
import numpy as np
import pytest

from pipeline.core.constants import RESERVED_TOKENS
from pipeline.core.tokenizer import Tokenizer, TokenizerSpec
from pipeline.reports.decoding import decoder_settings, decoding_report, ngram_stats
from pipeline.reports.gates import gates_report
from pipeline.reports.gradient_flow import hidden_gradient_norms, long_range_accuracy
from trainer.language_model import build_language_model

WORDS = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran"]


def _model(cell="lstm", layers=2, init_scale=0.5, hidden=8):
    keras.utils.set_random_seed(0)
    return build_language_model({"vocab_size": 4 + len(WORDS), "embedding_dim": hidden, "hidden_dim": hidden,
                                 "num_layers": layers, "cell": cell, "init_scale": init_scale})


def _tokenizer():
    return Tokenizer(TokenizerSpec(kind="word"), vocab=[*RESERVED_TOKENS, *WORDS])


def test_ngram_stats_exact():
    assert ngram_stats([[1, 2, 3, 1, 2, 3], [4, 5]]) == {
        "distinct_1": 5 / 8, "distinct_2": 4 / 6, "repetition_rate": 1 / 4}
    assert ngram_stats([[]]) == {"distinct_1": 0.0, "distinct_2": 0.0, "repetition_rate": 0.0}


def test_gradient_norms_one_per_distance_and_rnn_vanishes_faster():
    windows = np.random.default_rng(0).integers(4, 12, (6, 30)).astype(np.int32)
    targets = np.full([6], 5, np.int32)
    rnn = hidden_gradient_norms(_model("rnn", 1, init_scale=0.1, hidden=32), windows, targets)
    lstm = hidden_gradient_norms(_model("lstm", 1, init_scale=0.1, hidden=32), windows, targets)
    assert rnn.shape == lstm.shape == (29,)
    assert (rnn > 0).all() and (lstm > 0).all()
    assert rnn[-1] / rnn[0] < lstm[-1] / lstm[0]


def test_long_range_accuracy_covers_every_distance():
    accuracy = long_range_accuracy("lstm", hidden=8, steps=2)
    assert list(accuracy) == ["5", "10", "20", "40", "70", "100"]
    assert all(0.0 <= a <= 1.0 for a in accuracy.values())


def test_gates_report_files_and_saturation(tmp_path):
    summary = gates_report(_model(), _tokenizer(), "the cat sat on the mat", str(tmp_path), units=4)
    folder = tmp_path / "gates"
    assert set(os.listdir(folder)) == {"gates_layer0.png", "gates_layer1.png", "gate_distributions.png",
                                       "saturation.csv", "summary.json"}
    assert summary["tokens"] == 7  # <eos> + 6 words
    assert {layer: sorted(gates) for layer, gates in summary["saturation"].items()} == {
        "layer_0": ["forget", "input", "output"], "layer_1": ["forget", "input", "output"]}
    assert {layer: len(units) for layer, units in summary["units_shown"].items()} == {"layer_0": 4, "layer_1": 4}
    with open(folder / "saturation.csv") as f:
        header, *lines = [line.split(",") for line in f.read().split()]
    assert header == ["layer", "gate", "mean", "saturated_share", "below_0.1", "above_0.9"]
    assert {(f"layer_{r[0]}", r[1]): float(r[3]) for r in lines} == {
        (layer, gate): share for layer, gates in summary["saturation"].items() for gate, share in gates.items()}
    for row in lines:  # a share of saturated units is the share below 0.1 plus the share above 0.9
        assert float(row[3]) == pytest.approx(float(row[4]) + float(row[5])) and 0 < float(row[2]) < 1
    with pytest.raises(ValueError, match="needs an LSTM model"):
        gates_report(_model("rnn"), _tokenizer(), "the cat", str(tmp_path))


def test_decoding_report_every_setting(tmp_path):
    rows = decoding_report(_model(), _tokenizer(), ["the cat", "a dog"], str(tmp_path), max_new_tokens=5)
    assert [r["decoder"] for r in rows] == [label for label, _, _ in decoder_settings()]
    assert all(0 <= r["mean_length"] <= 5 and r["logprob_per_token"] <= 0 for r in rows)
    by_name = {r["decoder"]: {k: v for k, v in r.items() if k not in ("decoder", "ms_per_token")} for r in rows}
    assert by_name["beam w=1"] == by_name["greedy"]  # a beam of one is greedy search, exactly
    for t in ("0.7", "1.0", "1.3"):  # k past the vocabulary (12) keeps every token: the same draws
        assert by_name[f"top_k k=20 T={t}"] == by_name[f"top_k k=100 T={t}"] == by_name[f"top_k k=1000 T={t}"]
    folder = tmp_path / "decoding"
    assert set(os.listdir(folder)) == {"decoding.csv", "decoding.md", "diversity_vs_logprob.png", "length_vs_beam.png",
                                       "summary.json"}
    assert json.load(open(folder / "summary.json"))["prompts"] == ["the cat", "a dog"]
