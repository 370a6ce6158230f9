"""What our recurrent layers share: weights, variational dropout, the input projection,
time-major layout and masks. A subclass supplies only its time loop (`_run`).

Dropout masks come from stateless random ops keyed by a `seed` argument, so a training
step is a pure function of (weights, batch, state, seed): resuming from a checkpoint
replays exactly the same masks.
"""

from __future__ import annotations

import abc

import keras
import tensorflow as tf


WEIGHT_DROP_SALT = 3  # the layer's masks: 1 inputs, 2 recurrent input, 3 recurrent kernel


def masked_time_major(mask_tm, steps):
    """TensorArray of [B, 1] bool masks per step, or None when there is no mask."""
    if mask_tm is None:
        return None
    return tf.TensorArray(tf.bool, size=steps).unstack(mask_tm[:, :, None])


def dropout_mask(shape, rate: float, seed, salt: int, dtype):
    """Inverted-dropout mask (0 or 1/(1-rate)) from a stateless RNG; [shape]."""
    seed = tf.cast(seed, tf.int32) + tf.constant([0, salt], tf.int32)
    keep = tf.random.stateless_uniform(shape, seed=seed) >= rate
    return tf.cast(keep, dtype) / (1.0 - rate)


class RecurrentLayer(keras.layers.Layer):
    """Base of `LSTM` and `SimpleRNN`: returns (sequence, final states).

    Under a `mixed_bfloat16` dtype policy the matmuls run in bfloat16 while states,
    gate activations and outputs stay float32.

    Args:
        units: hidden size H.
        dropout: variational dropout on the inputs (the same mask at every step).
        recurrent_dropout: variational dropout on the recurrent input h.
        weight_drop: DropConnect on the recurrent kernel U [H, gates*H] when training: one
            inverted-dropout mask per call (a batch window), from the seed; `step` (the
            decoders, the export) uses U itself, its expectation.
        kernel_initializer, recurrent_initializer, bias_initializer: Keras initializers.
    """

    gates = 1
    state_names: tuple[str, ...] = ("h",)

    def __init__(
        self,
        units: int,
        dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        weight_drop: float = 0.0,
        kernel_initializer="glorot_uniform",
        recurrent_initializer="orthogonal",
        bias_initializer="zeros",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.units = units
        self.dropout = dropout
        self.recurrent_dropout = recurrent_dropout
        self.weight_drop = weight_drop
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.recurrent_initializer = keras.initializers.get(recurrent_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.supports_masking = True

    def build(self, input_shape) -> None:
        """Creates the input kernel W [D, gates*H], recurrent kernel U [H, gates*H] and bias."""
        size = self.gates * self.units
        self.kernel = self.add_weight(
            name="kernel", shape=(input_shape[-1], size), initializer=self.kernel_initializer)
        self.recurrent_kernel = self.add_weight(
            name="recurrent_kernel", shape=(self.units, size), initializer=self.recurrent_initializer)
        self.bias = self.add_weight(name="bias", shape=(size,), initializer=self._bias_initializer())

    def _bias_initializer(self):
        return self.bias_initializer

    def get_initial_state(self, batch_size) -> list[tf.Tensor]:
        """Zero float32 states, one [B, H] tensor per entry of `state_names`."""
        return [tf.zeros([batch_size, self.units], tf.float32) for _ in self.state_names]

    def call(self, inputs, initial_state=None, mask=None, training=False, seed=None):
        """inputs [B, T, D] (optionally initial_state, a list of [B, H], and mask [B, T]) ->
        (outputs [B, T, H], final states); dropout masks come from `seed` (stateless) when
        training.
        """
        x = tf.convert_to_tensor(inputs)
        batch = tf.shape(x)[0]
        states = initial_state if initial_state is not None else self.get_initial_state(batch)
        states = [tf.cast(s, tf.float32) for s in states]  # state and gate math stay float32
        x = tf.cast(x, self.compute_dtype)  # bfloat16 under mixed_bfloat16: matmuls only
        if seed is None:
            seed = tf.constant([0, 0], tf.int32)
        if training and self.dropout > 0:
            x = x * dropout_mask([batch, 1, tf.shape(x)[-1]], self.dropout, seed, 1, x.dtype)
        rec_mask = None
        if training and self.recurrent_dropout > 0:
            rec_mask = dropout_mask([batch, self.units], self.recurrent_dropout, seed, 2, tf.float32)
        kernel = tf.cast(self.kernel, x.dtype)
        x = tf.transpose(x, [1, 0, 2])  # time-major [T, B, D]: gates times smaller than xw
        xw = tf.tensordot(x, kernel, axes=1) + tf.cast(self.bias, x.dtype)  # one big matmul
        mask_tm = None if mask is None else tf.transpose(tf.cast(mask, tf.bool), [1, 0])
        u = tf.cast(tf.convert_to_tensor(self.recurrent_kernel), x.dtype)
        if training and self.weight_drop > 0:
            u = u * dropout_mask(tf.shape(u), self.weight_drop, seed, WEIGHT_DROP_SALT, u.dtype)
        outputs, final = self._run(xw, states, mask_tm, u, rec_mask)
        if mask_tm is not None:  # padded positions output zeros (their state is carried)
            outputs = tf.where(mask_tm[:, :, None], outputs, tf.zeros_like(outputs))
        return tf.transpose(outputs, [1, 0, 2]), final

    def step(self, x, states, weights=None):
        """One time step without the sequence machinery (for decoding, no dropout):
        x [B, D] -> (output [B, H], new states). `weights`: this layer's `step_weights()`,
        read once for several steps (by default read here).

        Example:
            >>> out, (h, c) = layer.step(tf.zeros([2, 3]), layer.get_initial_state(2))
        """
        kernel, recurrent_kernel, bias = self.step_weights() if weights is None else weights
        x = tf.cast(x, self.compute_dtype)
        states = [tf.cast(s, tf.float32) for s in states]
        xw = tf.matmul(x, kernel) + bias
        z = tf.cast(xw, tf.float32) + tf.cast(tf.matmul(tf.cast(states[0], recurrent_kernel.dtype),
                                                        recurrent_kernel), tf.float32)
        return self._cell(z, states)

    def step_weights(self) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """(kernel [D, gates*H], recurrent kernel [H, gates*H], bias [gates*H]) read as
        tensors in the compute dtype, for `step`: a graph loop that steps several times per
        iteration reads them once at the top of its body (each read is a node the executor
        runs; read outside the loop they would become loop variables, which cost more)."""
        dtype = self.compute_dtype
        return (tf.cast(self.kernel, dtype), tf.cast(tf.convert_to_tensor(self.recurrent_kernel), dtype),
                tf.cast(self.bias, dtype))

    @abc.abstractmethod
    def _cell(self, z, states):
        """The cell's update from pre-activations z [B, gates*H] -> (output, new states)."""

    def compute_mask(self, inputs, mask=None):
        """The input mask, passed on unchanged (outputs keep the time axis)."""
        return mask

    @abc.abstractmethod
    def _run(self, xw, states, mask_tm, recurrent_kernel, rec_mask):
        """The time loop: xw [T, B, gates*H] -> (outputs [T, B, H], final states)."""

    def get_config(self) -> dict:
        """The layer's arguments, for Keras saving."""
        return {
            **super().get_config(),
            "units": self.units,
            "dropout": self.dropout,
            "recurrent_dropout": self.recurrent_dropout,
            "weight_drop": self.weight_drop,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "recurrent_initializer": keras.initializers.serialize(self.recurrent_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
        }
