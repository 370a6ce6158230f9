"""The fused output layer + cross-entropy equals Dense + sparse_softmax_cross_entropy."""

import numpy as np
import pytest
import tensorflow as tf

from trainer.language_model import build_language_model
from trainer.layers.output_layer import softmax_nll


def _reference(hidden, kernel, bias, labels, rows_are_classes):
    logits = tf.matmul(hidden, kernel, transpose_b=rows_are_classes)
    if bias is not None:
        logits = logits + bias
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)


@pytest.mark.parametrize("rows_are_classes, with_bias", [(False, True), (True, True), (False, False)])
def test_values_and_gradients_equal_the_unfused_layers(rows_are_classes, with_bias):
    rng = np.random.default_rng(0)
    hidden = tf.constant(rng.normal(size=(7, 5)), tf.float32)
    kernel = tf.constant(rng.normal(size=(11, 5) if rows_are_classes else (5, 11)), tf.float32)
    bias = tf.constant(rng.normal(size=11), tf.float32) if with_bias else None
    labels = tf.constant(rng.integers(0, 11, 7), tf.int32)
    weights = tf.constant(rng.uniform(size=7), tf.float32)  # a non-uniform incoming gradient
    results = []
    for fn in (softmax_nll, _reference):
        with tf.GradientTape() as tape:
            watched = [hidden, kernel] + ([bias] if with_bias else [])
            tape.watch(watched)
            nll = fn(hidden, kernel, bias, labels, rows_are_classes)
            loss = tf.reduce_sum(nll * weights)
        results.append([nll, *tape.gradient(loss, watched)])
    for fused, reference in zip(*results, strict=True):
        np.testing.assert_allclose(fused, reference, rtol=1e-5, atol=1e-6)


def test_hand_computed_value():
    nll = softmax_nll(tf.constant([[1.0, 0.0]]), tf.constant([[2.0, 0.0], [0.0, 0.0]]), None, tf.constant([0]))
    np.testing.assert_allclose(nll, [-np.log(np.exp(2) / (np.exp(2) + 1))], rtol=1e-6)


def test_underflowing_target_probability_is_still_exact():
    """p(target) ~ e^-203 underflows float32; the NLL must still be log(1 + e^3) + 200, not inf."""
    hidden = tf.constant([[1.0], [1.0]])
    kernel = tf.constant([[0.0, -200.0, 3.0]])
    nll = softmax_nll(hidden, kernel, None, tf.constant([1, 2]))
    expected = _reference(hidden, kernel, None, tf.constant([1, 2]), False)
    np.testing.assert_allclose(nll, expected, rtol=1e-6)
    np.testing.assert_allclose(nll, [np.log(1 + np.exp(3)) + 200, np.log(1 + np.exp(3)) - 3], rtol=1e-6)


@pytest.mark.parametrize("tie, emb, hid", [(False, 4, 4), (True, 4, 4), (True, 3, 5)])
def test_model_nll_equals_cross_entropy_of_its_logits(tie, emb, hid):
    model = build_language_model({"vocab_size": 13, "embedding_dim": emb, "hidden_dim": hid, "num_layers": 2,
                                  "tie_embeddings": tie, "init_scale": 0.5})
    rng = np.random.default_rng(3)
    x = tf.constant(rng.integers(0, 13, (3, 6)), tf.int32)
    y = tf.constant(rng.integers(0, 13, (3, 6)), tf.int32)
    with tf.GradientTape(persistent=True) as tape:
        nll, states = model.nll(x, y)
        logits, ref_states = model(x)
        ref = tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits)
        loss, ref_loss = tf.reduce_mean(nll), tf.reduce_mean(ref)
    np.testing.assert_allclose(nll, ref, rtol=1e-5)
    for a, b in zip(states, ref_states, strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(tape.gradient(loss, model.trainable_variables),
                    tape.gradient(ref_loss, model.trainable_variables), strict=True):
        np.testing.assert_allclose(tf.convert_to_tensor(a), tf.convert_to_tensor(b), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("feeding, tie", [(True, False), (False, True)])
def test_seq2seq_nll_equals_cross_entropy_of_its_logits(feeding, tie):
    from trainer.seq2seq_model import build_seq2seq_model

    model = build_seq2seq_model({
        "source_vocab_size": 11, "target_vocab_size": 13, "embedding_dim": 4, "hidden_dim": 4,
        "input_feeding": feeding, "tie_embeddings": tie, "init_scale": 0.5})
    rng = np.random.default_rng(4)
    source = tf.constant(rng.integers(4, 11, (2, 5)), tf.int32)
    target_in, target_out = (tf.constant(rng.integers(4, 13, (2, 4)), tf.int32) for _ in range(2))
    nll = model.nll(source, target_in, target_out)
    reference = tf.nn.sparse_softmax_cross_entropy_with_logits(target_out, model(source, target_in))
    np.testing.assert_allclose(nll, reference, rtol=1e-5)
