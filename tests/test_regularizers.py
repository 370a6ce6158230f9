"""The LSTM LM regularisers (Merity et al. 2017) on tiny models: weight drop, embedding
dropout, AR/TAR and NT-ASGD, each against what it must equal."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import trainer.training as training
from pipeline.core.config import PipelineConfig, TrainConfig
from pipeline.core.config_loader import load_config
from pipeline.core.errors import ConfigError
from trainer.language_model import build_language_model
from trainer.layers.lstm import LSTM
from trainer.layers.recurrent_base import WEIGHT_DROP_SALT, dropout_mask
from trainer.model_dir import model_config_for, run_dir_for
from trainer.model_parts import Salt
from trainer.training import Trainer, WeightAverage, nt_asgd_switch

from conftest import counting_streams, die_at_call

SEED = tf.constant([3, 9], tf.int32)
TINY = {"vocab_size": 12, "embedding_dim": 6, "hidden_dim": 5, "num_layers": 2, "dropout": 0.0}


def _lm(seed=0, **overrides):
    keras.utils.set_random_seed(seed)
    return build_language_model({**TINY, **overrides})


def _ids(batch=3, steps=7):
    return tf.constant(np.random.default_rng(1).integers(4, 12, (batch, steps)), tf.int32)


def _copy_weights(source, target):
    for a, b in zip(target.weights, source.weights):
        a.assign(b)


def test_weight_drop_is_dropconnect_on_U_one_mask_per_window():
    keras.utils.set_random_seed(0)
    layer = LSTM(4, weight_drop=0.5)
    x = tf.random.stateless_normal([2, 6, 3], seed=[1, 1])
    out, _ = layer(x, training=True, seed=SEED)
    again, _ = layer(x, training=True, seed=SEED)
    other, _ = layer(x, training=True, seed=SEED + 1)
    plain, _ = layer(x, training=False)
    mask = dropout_mask(tf.shape(layer.recurrent_kernel), 0.5, SEED, WEIGHT_DROP_SALT, tf.float32)
    masked = LSTM(4)
    masked(x)
    masked.kernel.assign(layer.kernel)
    masked.bias.assign(layer.bias)
    masked.recurrent_kernel.assign(layer.recurrent_kernel * mask)
    expected, _ = masked(x, training=False)

    np.testing.assert_array_equal(out.numpy(), again.numpy())  # seeded: the same mask
    np.testing.assert_allclose(out.numpy(), expected.numpy(), rtol=1e-6, atol=1e-7)
    assert not np.allclose(out.numpy(), other.numpy())
    assert not np.allclose(out.numpy(), plain.numpy())
    assert set(np.unique(mask.numpy())) == {0.0, 2.0}
    # Decoding (step) and evaluation use U itself
    step_out, _ = layer.step(x[:, 0], layer.get_initial_state(2))
    np.testing.assert_allclose(step_out.numpy(), plain[:, 0].numpy(), rtol=1e-6)


def test_weight_drop_gradient_reaches_only_kept_weights():
    keras.utils.set_random_seed(0)
    layer = LSTM(4, weight_drop=0.5)
    x = tf.random.stateless_normal([2, 6, 3], seed=[1, 1])
    layer(x)
    with tf.GradientTape() as tape:
        out, _ = layer(x, training=True, seed=SEED)
        loss = tf.reduce_sum(out * out)
    grad = tape.gradient(loss, layer.recurrent_kernel).numpy()
    dropped = dropout_mask(tf.shape(layer.recurrent_kernel), 0.5, SEED, WEIGHT_DROP_SALT, tf.float32).numpy() == 0
    assert dropped.sum() > 10
    assert np.all(grad[dropped] == 0.0)
    assert np.count_nonzero(grad[~dropped]) == (~dropped).sum()


def test_embedding_dropout_drops_whole_words_scaled():
    lm = _lm(embedding_dropout=0.5)
    ids = _ids()
    words = dropout_mask([TINY["vocab_size"]], 0.5, SEED, Salt.EMBEDDING_WORDS, tf.float32)
    reference = _lm(seed=5)
    _copy_weights(lm, reference)
    reference.embedding.embeddings.assign(lm.embedding.embeddings * words[:, None])

    logits, _ = lm(ids, training=True, seed=SEED)
    expected, _ = reference(ids, training=False)

    used = np.unique(ids.numpy())
    assert set(words.numpy()[used]) == {0.0, 2.0}  # some words of this batch drop, the rest x2
    np.testing.assert_allclose(logits.numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)
    plain, _ = lm(ids, training=False)
    assert not np.allclose(plain.numpy(), logits.numpy())


def test_ar_and_tar_are_the_last_layers_means():
    lm = _lm()
    ids, targets = _ids(), _ids(steps=7)[:, ::-1]
    nll, penalty, _ = lm.regularized_nll(ids, targets, None, SEED, activation_penalty=2.0, temporal_penalty=1.0)
    x = lm.embedding(ids)
    for layer in lm.recurrent:
        x, _ = layer(x)
    h = x.numpy()  # dropout 0: the dropped outputs are the outputs
    expected = 2.0 * np.mean(h ** 2) + 1.0 * np.mean((h[:, 1:] - h[:, :-1]) ** 2)

    assert penalty.numpy() == pytest.approx(expected, rel=1e-5)
    plain, _ = lm.nll(ids, targets, training=True, seed=SEED)
    np.testing.assert_allclose(nll.numpy(), plain.numpy(), rtol=1e-6)
    assert lm.regularized_nll(ids, targets, None, SEED)[1].numpy() == 0.0


def test_the_penalties_join_the_per_token_loss_times_the_window(tmp_path):
    """One SGD step at lr 1 moves the weights by exactly -grad(sum(nll) / B + T * penalty)."""
    cfg = TrainConfig(batch_size=3, bptt=7, optimizer="sgd", learning_rate=1.0, clip_norm=1e9,
                      activation_penalty=2.0, temporal_penalty=1.0)
    lm = _lm()
    reference = _lm(seed=5)
    _copy_weights(lm, reference)
    trainer = Trainer(lm, cfg, str(tmp_path), verbose=False)
    ids, targets = _ids(), _ids()[:, ::-1]
    states = [v.value() for v in trainer._carried]
    with tf.GradientTape() as tape:
        nll, penalty, _ = reference.regularized_nll(ids, targets, states, SEED, 2.0, 1.0)
        loss = tf.reduce_sum(nll) / 3 + 7 * penalty
    grads = tape.gradient(loss, reference.trainable_variables)

    trainer._train_step(ids, targets, states, SEED)

    for after, before, grad in zip(lm.trainable_variables, reference.trainable_variables, grads):
        np.testing.assert_allclose(after.numpy(), before.numpy() - tf.convert_to_tensor(grad).numpy(),
                                   rtol=1e-4, atol=1e-6)


def test_nt_asgd_switch_rule():
    assert nt_asgd_switch([150.0, 120.0, 121.0, 122.0], 123.0, nonmono=2)  # worse than min(150, 120)
    assert not nt_asgd_switch([150.0, 120.0, 121.0, 122.0], 119.0, nonmono=2)
    assert not nt_asgd_switch([150.0, 120.0], 160.0, nonmono=2)  # not more than nonmono epochs yet
    assert nt_asgd_switch([150.0, 120.0, 130.0], 125.0, nonmono=1)


ASGD = dict(batch_size=4, bptt=8, optimizer="nt_asgd", nonmono=1, learning_rate=0.5, lr_decay=1.0,
            checkpoint_every=5)


def test_nt_asgd_averages_the_sgd_iterates_and_keeps_the_average(tmp_path, monkeypatch):
    """Averaging starts after epoch 1 (the trigger forced): the average is the mean of the
    plain SGD iterates of epoch 2, and the kept weights (best) are that average."""
    train, valid = counting_streams(100, 20)
    monkeypatch.setattr(training, "nt_asgd_switch", lambda *args: True)
    asgd = Trainer(_lm(dropout=0.2), TrainConfig(epochs=2, **ASGD), str(tmp_path / "asgd"), verbose=False)
    history = asgd.fit(train, valid)

    sgd_model = _lm(dropout=0.2)
    sgd = Trainer(sgd_model, TrainConfig(epochs=2, **{**ASGD, "optimizer": "sgd"}), str(tmp_path / "sgd"),
                  verbose=False)
    iterates, step = [], sgd._train_step

    def recording_step(*args):
        out = step(*args)
        if int(sgd._epoch.numpy()) == 1:
            iterates.append([v.numpy().copy() for v in sgd_model.trainable_variables])
        return out

    sgd._train_step = recording_step
    sgd.fit(train, valid)

    steps = (len(train) - 1) // 4 // 8 + 1
    assert [h["averaged"] for h in history] == [0.0, 1.0]
    assert int(asgd._averages.steps.numpy()) == len(iterates) == steps
    for average, values in zip(asgd._averages.values, zip(*iterates)):
        np.testing.assert_allclose(average.numpy(), np.mean(values, axis=0), rtol=1e-5, atol=1e-6)
    assert history[1]["improved"]  # so the kept (best) weights are the average
    best = _lm(seed=4, dropout=0.2)
    best.load_weights(asgd.best_weights_path())
    for kept, average in zip(best.trainable_variables, asgd._averages.values):
        np.testing.assert_array_equal(kept.numpy(), average.numpy())
    with asgd.evaluation_weights():
        assert asgd.evaluate(valid).perplexity == pytest.approx(history[1]["valid_ppl"], rel=1e-6)


def test_nt_asgd_resume_restores_the_average_exactly(tmp_path, monkeypatch):
    train, valid = counting_streams(100, 20)
    monkeypatch.setattr(training, "nt_asgd_switch", lambda *args: True)
    cfg = TrainConfig(epochs=3, **ASGD)
    full = Trainer(_lm(dropout=0.2), cfg, str(tmp_path / "full"), verbose=False)
    full.fit(train, valid)

    cut = Trainer(_lm(dropout=0.2), cfg, str(tmp_path / "cut"), verbose=False)
    die_at_call(cut, 27)  # epoch 2 (19 steps an epoch), 1 step after the checkpoint at step 25
    with pytest.raises(KeyboardInterrupt):
        cut.fit(train, valid)
    resumed = Trainer(_lm(seed=8, dropout=0.2), cfg, str(tmp_path / "cut"), verbose=False)
    assert resumed.restore() and int(resumed._averages.steps.numpy()) == 25 - 19
    resumed.fit(train, valid)

    assert int(resumed._averages.steps.numpy()) == int(full._averages.steps.numpy()) == 2 * 19
    for a, b in zip(resumed._averages.values, full._averages.values):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    for a, b in zip(resumed.model.trainable_variables, full.model.trainable_variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_weight_average_is_the_running_mean():
    v = tf.Variable([0.0, 0.0])
    average = WeightAverage([v])
    average.update([v])  # not started: nothing
    assert not average.active and int(average.steps.numpy()) == 0
    average.start()
    for value in ([1.0, 2.0], [3.0, 4.0], [5.0, 9.0]):
        v.assign(value)
        average.update([v])
    np.testing.assert_allclose(average.values[0].numpy(), [3.0, 5.0])
    assert average.active and int(average.steps.numpy()) == 3


def test_regularisers_are_config_keys_that_reach_the_model_and_the_run_key():
    plain = PipelineConfig()
    awd = PipelineConfig.model_validate({"model": {"weight_drop": 0.5, "embedding_dropout": 0.1},
                                         "train": {"activation_penalty": 2.0, "temporal_penalty": 1.0,
                                                   "optimizer": "nt_asgd", "nonmono": 5}})
    model_config = model_config_for(awd, {"vocab_size": 50})
    assert (model_config["weight_drop"], model_config["embedding_dropout"]) == (0.5, 0.1)
    lm = build_language_model(model_config)
    assert all(layer.weight_drop == 0.5 for layer in lm.recurrent) and lm.embedding_dropout == 0.1
    assert build_language_model(lm.get_config() | {}).recurrent[0].weight_drop == 0.5
    # Off (the defaults), the run key is what it was before these keys existed
    assert run_dir_for(plain, "f" * 64).endswith("/" + "abb379cc7b8e2fd6")
    seq2seq = PipelineConfig.model_validate({"model": {"kind": "seq2seq"},
                                             "data": {"format": "pairs", "source_train": "a", "target_train": "b"}})
    assert run_dir_for(seq2seq, "f" * 64).endswith("/" + "450b5cbcf93b6ab9")
    assert run_dir_for(awd, "f" * 64) != run_dir_for(plain, "f" * 64)


def test_seq2seq_refuses_the_lm_regularisers(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: {format: pairs, source_train: a, target_train: b}\n"
                    "model: {kind: seq2seq, weight_drop: 0.3}\n"
                    "train: {temporal_penalty: 1.0}\n")
    with pytest.raises(ConfigError, match="model.weight_drop, train.temporal_penalty apply to language "
                                          "models \\(model.kind lm\\) only"):
        load_config(str(path))


def test_lmpipe_train_with_every_regulariser_records_them_and_exports(tmp_path):
    from mlflow.tracking import MlflowClient

    from pipeline.orchestrate.cli import main
    from conftest import run_args, run_corpus

    run_corpus(tmp_path)
    args = run_args(tmp_path, "--set", "model.weight_drop=0.5", "--set", "model.embedding_dropout=0.1",
                    "--set", "train.activation_penalty=2", "--set", "train.temporal_penalty=1",
                    "--set", "train.optimizer=nt_asgd", "--set", "train.nonmono=1", "--set", "train.epochs=4",
                    "--set", "train.learning_rate=0.5", "--set", "train.lr_decay=1.0")
    assert main(["preprocess", *args]) == 0
    assert main(["train", *args]) == 0
    assert main(["export", "--no-check", "--no-register", *args]) == 0

    (run_dir,) = os.listdir(tmp_path / "train")
    metrics = json.load(open(tmp_path / "train" / run_dir / "model" / "metrics.json"))
    model_config = json.load(open(tmp_path / "train" / run_dir / "model" / "model_config.json"))
    run = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(metrics["mlflow_run_id"])
    assert run.data.tags["regularizers"] == ("weight_drop=0.5,embedding_dropout=0.1,activation_penalty=2,"
                                             "temporal_penalty=1,nt_asgd(nonmono=1)")
    assert (run.data.params["model.weight_drop"], run.data.params["train.optimizer"]) == ("0.5", "nt_asgd")
    assert (model_config["weight_drop"], model_config["embedding_dropout"]) == (0.5, 0.1)
    averaged = [h["averaged"] for h in json.load(open(tmp_path / "train" / run_dir / "model" / "history.json"))]
    assert averaged[0] == 0.0 and set(averaged) <= {0.0, 1.0}
    assert os.path.exists(tmp_path / "export" / "lm" / "1" / "saved_model.pb")
