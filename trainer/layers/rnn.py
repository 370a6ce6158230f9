"""The vanilla RNN layer, for comparison with the LSTM: h' = tanh(x W + h U + b)."""

from __future__ import annotations

import keras
import tensorflow as tf

from trainer.layers.recurrent_base import RecurrentLayer, masked_time_major


@keras.saving.register_keras_serializable(package="lmpipe")
class SimpleRNN(RecurrentLayer):
    """Elman RNN layer returning the sequence and the final [h].

    Call: `layer(x [B, T, D], initial_state=[h [B, H]], mask=[B, T], training, seed)`
    -> `(outputs [B, T, H], [h [B, H]])`; a masked step leaves h unchanged and outputs zeros.

    Example:
        >>> out, (h,) = SimpleRNN(4)(tf.zeros([2, 5, 3]))
        >>> out.shape
        TensorShape([2, 5, 4])
    """

    gates = 1
    state_names = ("h",)

    def _cell(self, z, states):
        h = tf.tanh(z)
        return h, [h]

    def _run(self, xw, states, mask_tm, u, rec_mask):
        steps = tf.shape(xw)[0]
        xs = tf.TensorArray(xw.dtype, size=steps).unstack(xw)
        masks = masked_time_major(mask_tm, steps)
        hs = tf.TensorArray(tf.float32, size=steps)

        def body(t, h, hs):
            hr = h * rec_mask if rec_mask is not None else h
            h_new = tf.tanh(tf.cast(xs.read(t), tf.float32)
                            + tf.cast(tf.matmul(tf.cast(hr, u.dtype), u), tf.float32))
            if masks is not None:
                h_new = tf.where(masks.read(t), h_new, h)
            return t + 1, h_new, hs.write(t, h_new)

        _, h, hs = tf.while_loop(
            lambda t, *_: t < steps, body, (0, states[0], hs), maximum_iterations=steps)
        return hs.stack(), [h]
