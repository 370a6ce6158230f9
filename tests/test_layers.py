"""Our LSTM and RNN layers against keras.layers and a NumPy reference, to 1e-5."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from trainer.layers.lstm import LSTM
from trainer.layers.rnn import SimpleRNN

B, T, D, H = 3, 7, 5, 4


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    x = tf.constant(rng.normal(size=(B, T, D)).astype("float32"))
    mask = tf.constant(rng.random((B, T)) > 0.3)
    h0 = tf.constant(rng.normal(size=(B, H)).astype("float32"))
    c0 = tf.constant(rng.normal(size=(B, H)).astype("float32"))
    return x, mask, h0, c0


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def numpy_lstm(x, h, c, kernel, recurrent, bias, mask=None):
    """The gate equations, one step at a time (gate blocks i, f, g, o)."""
    outs = []
    for t in range(x.shape[1]):
        z = x[:, t] @ kernel + h @ recurrent + bias
        i, f, g, o = np.split(z, 4, axis=-1)
        i, f, g, o = _sigmoid(i), _sigmoid(f), np.tanh(g), _sigmoid(o)
        c_new = f * c + i * g
        h_new = o * np.tanh(c_new)
        m = np.ones((x.shape[0], 1), bool) if mask is None else mask[:, t:t + 1]
        c, h = np.where(m, c_new, c), np.where(m, h_new, h)
        outs.append(np.where(m, h_new, 0.0))
    return np.stack(outs, 1), h, c


@pytest.mark.parametrize("use_mask", [False, True])
def test_lstm_matches_keras_outputs_states_and_gradients(use_mask):
    x, mask, h0, c0 = _inputs()
    mask = mask if use_mask else None
    ours = LSTM(H)
    ours(x)
    ref = keras.layers.LSTM(H, return_sequences=True, return_state=True, zero_output_for_mask=True)
    ref(x)
    ref.set_weights(ours.get_weights())  # same layout: gate blocks i, f, g (c), o
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([x, h0, c0])
        out1, (h1, c1) = ours(x, initial_state=[h0, c0], mask=mask)
        out2, h2, c2 = ref(x, initial_state=[h0, c0], mask=mask)
        loss1 = tf.reduce_sum(out1 ** 2) + tf.reduce_sum(h1 * 2.0) + tf.reduce_sum(c1 * 3.0)
        loss2 = tf.reduce_sum(out2 ** 2) + tf.reduce_sum(h2 * 2.0) + tf.reduce_sum(c2 * 3.0)
    for a, b in [(out1, out2), (h1, h2), (c1, c2)]:
        np.testing.assert_allclose(a, b, atol=1e-5)
    g1 = tape.gradient(loss1, [x, h0, c0] + ours.trainable_weights)
    g2 = tape.gradient(loss2, [x, h0, c0] + ref.trainable_weights)
    for a, b in zip(g1, g2, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_lstm_matches_numpy_equations():
    x, mask, h0, c0 = _inputs(1)
    layer = LSTM(H, bias_initializer="random_normal")
    layer(x)
    kernel, recurrent, bias = [w.numpy() for w in layer.weights]
    out, (h, c) = layer(x, initial_state=[h0, c0], mask=mask)
    ref_out, ref_h, ref_c = numpy_lstm(x.numpy(), h0.numpy(), c0.numpy(), kernel, recurrent, bias, mask.numpy())
    np.testing.assert_allclose(out, ref_out, atol=1e-5)
    np.testing.assert_allclose(h, ref_h, atol=1e-5)
    np.testing.assert_allclose(c, ref_c, atol=1e-5)


def test_forget_gate_bias_starts_at_one():
    layer = LSTM(H)
    layer(tf.zeros([1, 1, D]))
    np.testing.assert_array_equal(layer.bias.numpy(), [0] * H + [1] * H + [0] * 2 * H)
    off = LSTM(H, unit_forget_bias=False)
    off(tf.zeros([1, 1, D]))
    assert not off.bias.numpy().any()


@pytest.mark.parametrize("use_mask", [False, True])
def test_rnn_matches_keras_simple_rnn(use_mask):
    x, mask, h0, _ = _inputs(2)
    mask = mask if use_mask else None
    ours = SimpleRNN(H)
    ours(x)
    ref = keras.layers.SimpleRNN(H, return_sequences=True, return_state=True, zero_output_for_mask=True)
    ref(x)
    ref.set_weights(ours.get_weights())
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([x, h0])
        out1, (h1,) = ours(x, initial_state=[h0], mask=mask)
        out2, h2 = ref(x, initial_state=[h0], mask=mask)
        loss1, loss2 = tf.reduce_sum(out1 ** 2) + tf.reduce_sum(h1), tf.reduce_sum(out2 ** 2) + tf.reduce_sum(h2)
    np.testing.assert_allclose(out1, out2, atol=1e-5)
    np.testing.assert_allclose(h1, h2, atol=1e-5)
    for a, b in zip(tape.gradient(loss1, [x, h0] + ours.trainable_weights),
                    tape.gradient(loss2, [x, h0] + ref.trainable_weights), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("cls", [LSTM, SimpleRNN])
def test_config_and_keras_file_round_trip(cls, tmp_path):
    x, mask, _, _ = _inputs(3)
    layer = cls(H, dropout=0.25, recurrent_dropout=0.1, name="rec")
    inputs = keras.Input((T, D))
    outputs, _ = layer(inputs)
    model = keras.Model(inputs, outputs)
    clone = cls.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(model(x), loaded(x))


def test_variational_dropout_same_mask_at_every_step():
    x = tf.random.normal([2, 6, D])
    layer = LSTM(H, dropout=0.5)
    layer(x)
    seed = tf.constant([7, 9])
    with tf.GradientTape() as tape:
        tape.watch(x)
        out, _ = layer(x, training=True, seed=seed)
        last = out[:, -1]
    grad = tape.gradient(last, x).numpy()  # reaches every step through the state
    dropped = grad == 0
    assert dropped.any() and not dropped.all()
    assert (dropped == dropped[:, :1, :]).all()  # the same input features at every step
    again, _ = layer(x, training=True, seed=seed)
    np.testing.assert_array_equal(out, again)  # stateless: the seed decides the mask
    other, _ = layer(x, training=True, seed=tf.constant([7, 10]))
    assert not np.allclose(out, other)
    plain, _ = layer(x, training=False, seed=seed)
    assert not np.allclose(out, plain)
