"""Our LSTM layer: the gate equations written out, fast on CPU, masks and states explicit.

    i = sigmoid(x W_i + h U_i + b_i)        input gate
    f = sigmoid(x W_f + h U_f + b_f)        forget gate
    g = tanh(x W_g + h U_g + b_g)           candidate
    o = sigmoid(x W_o + h U_o + b_o)        output gate
    c' = f * c + i * g
    h' = o * tanh(c')

Speed: one matmul for all four gates; the input projection of the whole sequence is one
large matmul before the time loop; inside the graph loop (tf.while_loop) only `h @ U`.
Each step's projected input is read from a TensorArray (unstacked once), because indexing
a tensor inside the loop makes the backward pass grow with the square of the length.
The backward pass is written by hand (`tf.custom_gradient`): its loop carries only the
elementwise gate derivatives and `dz @ U^T`; the weight gradients are two large matmuls
over the whole sequence after the loop.

Kernel layout matches `keras.layers.LSTM` (gate blocks i, f, g, o), so weights carry over.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from trainer.layers.recurrent_base import RecurrentLayer, masked_time_major


@keras.saving.register_keras_serializable(package="lmpipe")
class LSTM(RecurrentLayer):
    """Long short-term memory layer returning the sequence and the final (h, c).

    Args:
        units: hidden size H.
        unit_forget_bias: start the forget-gate bias at 1 (Jozefowicz et al. 2015).
        dropout: variational dropout rate on the inputs (one mask for all time steps).
        recurrent_dropout: variational dropout rate on h before `h @ U`.
        kernel_initializer, recurrent_initializer, bias_initializer: Keras initializers.

    Call: `layer(x [B, T, D], initial_state=[h [B, H], c [B, H]], mask=[B, T] bool,
    training=bool, seed=[2] int)` -> `(outputs [B, T, H], [h [B, H], c [B, H]])`.
    At a masked (padded) step the state is left unchanged and the output is zeros, as
    `keras.layers.LSTM(zero_output_for_mask=True)` does.

    Example:
        >>> layer = LSTM(4)
        >>> out, (h, c) = layer(tf.zeros([2, 5, 3]))
        >>> out.shape, h.shape
        (TensorShape([2, 5, 4]), TensorShape([2, 4]))
    """

    gates = 4
    state_names = ("h", "c")

    def __init__(self, units: int, unit_forget_bias: bool = True, **kwargs) -> None:
        super().__init__(units, **kwargs)
        self.unit_forget_bias = unit_forget_bias

    def _bias_initializer(self):
        if not self.unit_forget_bias:
            return self.bias_initializer
        base = self.bias_initializer
        units = self.units

        def init(shape, dtype=None):
            b = base((units,), dtype=dtype)
            return tf.concat([b, tf.ones((units,), dtype), base((2 * units,), dtype=dtype)], 0)

        return init

    def _run(self, xw, states, mask_tm, recurrent_kernel, rec_mask):
        h0, c0 = states
        return _lstm_sequence(xw, h0, c0, recurrent_kernel, mask_tm, rec_mask)

    def _cell(self, z, states):
        i, f, _, o = tf.split(tf.sigmoid(z), 4, axis=-1)
        g = tf.tanh(z[:, 2 * self.units:3 * self.units])
        c = f * states[1] + i * g
        h = o * tf.tanh(c)
        return h, [h, c]

    def trace(self, inputs, initial_state=None) -> dict[str, tf.Tensor]:
        """Gate activations and cell states over time, for inspection (no dropout):
        {"input", "forget", "candidate", "output", "cell", "hidden"}, each [B, T, H]."""
        x = tf.cast(tf.convert_to_tensor(inputs), self.compute_dtype)
        states = initial_state if initial_state is not None else self.get_initial_state(tf.shape(x)[0])
        xw = tf.transpose(tf.tensordot(x, tf.cast(self.kernel, x.dtype), axes=1) + tf.cast(self.bias, x.dtype),
                          [1, 0, 2])
        u = tf.cast(tf.convert_to_tensor(self.recurrent_kernel), x.dtype)
        hs, cs, gates = _forward(xw, tf.cast(states[0], tf.float32), tf.cast(states[1], tf.float32), u, None, None)
        i, f, g, o = tf.split(gates, 4, axis=-1)
        named = {"input": i, "forget": f, "candidate": g, "output": o, "cell": cs, "hidden": hs}
        return {k: tf.transpose(v, [1, 0, 2]) for k, v in named.items()}

    def get_config(self) -> dict:
        """The layer's arguments, `unit_forget_bias` included, for Keras saving."""
        return {**super().get_config(), "unit_forget_bias": self.unit_forget_bias}


def _lstm_sequence(xw, h0, c0, u, mask_tm, rec_mask):
    """xw [T, B, 4H] time-major projected inputs -> (outputs [T, B, H], h, c)."""

    @tf.custom_gradient
    def run(xw, h0, c0, u):
        hs, cs, gates = _forward(xw, h0, c0, u, mask_tm, rec_mask)

        def grad(d_hs, d_h, d_c):
            return _backward(d_hs, d_h, d_c, hs, cs, gates, h0, c0, u, mask_tm, rec_mask, xw.dtype)

        return (hs, hs[-1], cs[-1]), grad

    outputs, h, c = run(xw, h0, c0, u)
    return outputs, [h, c]


def _forward(xw, h0, c0, u, mask_tm, rec_mask):
    steps = tf.shape(xw)[0]
    units = tf.shape(h0)[-1]
    xs = tf.TensorArray(xw.dtype, size=steps, infer_shape=False).unstack(xw)
    masks = masked_time_major(mask_tm, steps)
    hs = tf.TensorArray(h0.dtype, size=steps)
    cs = tf.TensorArray(c0.dtype, size=steps)
    acts = tf.TensorArray(tf.float32, size=steps)

    def body(t, h, c, hs, cs, acts):
        hr = h * rec_mask if rec_mask is not None else h
        z = tf.cast(xs.read(t), tf.float32) + tf.cast(tf.matmul(tf.cast(hr, u.dtype), u), tf.float32)
        s = tf.sigmoid(z)
        i, f, _, o = tf.split(s, 4, axis=-1)
        g = tf.tanh(z[:, 2 * units:3 * units])
        c_new = f * c + i * g
        h_new = o * tf.tanh(c_new)
        if masks is not None:
            m = masks.read(t)
            c_new = tf.where(m, c_new, c)
            h_new = tf.where(m, h_new, h)
        act = tf.concat([i, f, g, o], axis=-1)
        return t + 1, h_new, c_new, hs.write(t, h_new), cs.write(t, c_new), acts.write(t, act)

    _, _, _, hs, cs, acts = tf.while_loop(
        lambda t, *_: t < steps, body, (0, h0, c0, hs, cs, acts),
        maximum_iterations=steps)
    return hs.stack(), cs.stack(), acts.stack()


def _backward(d_hs, d_h, d_c, hs, cs, gates, h0, c0, u, mask_tm, rec_mask, xw_dtype):
    """Backpropagation through time for `_forward`; returns grads of (xw, h0, c0, u).

    Everything that does not depend on the incoming gradient is computed for all steps at
    once before the loop, so each step of the loop is a handful of ops:
        dh = d_out[t] + dh'           dc = dh * A[t] + dc'
        dz = [dc, dc, dc, dh] * K[t]  dh' = dz @ U^T     dc' = dc * F[t]
    with A = o (1 - tanh^2 c), K = [g i (1-i), c_prev f (1-f), i (1-g^2), tanh(c) o (1-o)],
    F = f (a padded step passes dh and dc through unchanged and gives dz = 0).
    """
    steps = tf.shape(hs)[0]
    d_hs = tf.zeros_like(hs) if d_hs is None else d_hs
    d_h = tf.zeros_like(h0) if d_h is None else d_h
    d_c = tf.zeros_like(c0) if d_c is None else d_c
    h_prev = tf.concat([h0[None], hs[:-1]], 0)  # [T, B, H]
    c_prev = tf.concat([c0[None], cs[:-1]], 0)
    i, f, g, o = tf.split(gates, 4, axis=-1)
    tanh_c = tf.tanh(cs)
    a = o * (1.0 - tanh_c * tanh_c)
    k = tf.concat([g * i * (1.0 - i), c_prev * f * (1.0 - f), i * (1.0 - g * g), tanh_c * o * (1.0 - o)], -1)
    pass_through = None
    if mask_tm is not None:
        m = tf.cast(mask_tm[:, :, None], tf.float32)  # [T, B, 1]
        a, k, pass_through = a * m, k * m, 1.0 - m
        f = f * m + pass_through
    d_out = tf.TensorArray(tf.float32, size=steps).unstack(d_hs)
    a_ta = tf.TensorArray(tf.float32, size=steps).unstack(a)
    k_ta = tf.TensorArray(tf.float32, size=steps).unstack(k)
    f_ta = tf.TensorArray(tf.float32, size=steps).unstack(f)
    keep_ta = tf.TensorArray(tf.float32, size=steps).unstack(pass_through) if pass_through is not None else None
    dzs = tf.TensorArray(tf.float32, size=steps)
    u_t = tf.transpose(u)

    def body(t, dh_next, dc_next, dzs):
        dh = d_out.read(t) + dh_next
        dc = dh * a_ta.read(t) + dc_next
        dz = tf.concat([dc, dc, dc, dh], axis=-1) * k_ta.read(t)
        dh_prev = tf.cast(tf.matmul(tf.cast(dz, u_t.dtype), u_t), tf.float32)
        if rec_mask is not None:
            dh_prev = dh_prev * rec_mask
        if keep_ta is not None:
            dh_prev = dh_prev + dh * keep_ta.read(t)
        return t - 1, dh_prev, dc * f_ta.read(t), dzs.write(t, dz)

    _, dh0, dc0, dzs = tf.while_loop(
        lambda t, *_: t >= 0, body, (steps - 1, d_h, d_c, dzs),
        maximum_iterations=steps)
    dz_all = tf.cast(dzs.stack(), u.dtype)  # [T, B, 4H]
    h_in = h_prev * rec_mask if rec_mask is not None else h_prev
    units = tf.shape(h0)[-1]
    d_u = tf.matmul(tf.reshape(tf.cast(h_in, u.dtype), [-1, units]), tf.reshape(dz_all, [-1, 4 * units]),
                    transpose_a=True)
    return tf.cast(dz_all, xw_dtype), dh0, dc0, d_u
