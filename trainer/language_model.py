"""The language model: embedding -> dropout -> N recurrent layers -> dropout -> logits.

The same weights serve two calls:
- `model(ids [B, T], states)` -> `(logits [B, T, V], states)`, for training and scoring;
- `model.step(ids [B], states)` -> `(logits [B, V], states)`, one token at a time, which is
  all the decoders (serving/) ever see of the model.

States are a flat list: [h_1, c_1, h_2, c_2, ...] for LSTM layers, [h_1, h_2, ...] for RNN.

Example:
    >>> lm = LanguageModel(vocab_size=12, embedding_dim=4, hidden_dim=4, num_layers=2)
    >>> logits, states = lm(tf.zeros([3, 5], tf.int32))
    >>> logits.shape, len(states)
    (TensorShape([3, 5, 12]), 4)
"""

from __future__ import annotations

import keras
import tensorflow as tf

from trainer.layers.lstm import LSTM
from trainer.layers.output_layer import output_layer_nll
from trainer.layers.recurrent_base import dropout_mask
from trainer.layers.rnn import SimpleRNN
from trainer.model_parts import OutputAndDropout, Salt, check_precision, uniform_init

CELLS = {"lstm": LSTM, "rnn": SimpleRNN}
CHUNK_TOKENS = 2048  # token_nll reads at most about this many B x T positions at once

PRIME_UNROLL = 4  # prompt positions per iteration of prime's loop (see prime)


@keras.saving.register_keras_serializable(package="lmpipe")
class LanguageModel(OutputAndDropout, keras.Model):
    """A word/char/subword LSTM (or vanilla RNN) language model.

    Args:
        vocab_size: V, including the reserved ids.
        embedding_dim: E.
        hidden_dim: H of every recurrent layer.
        num_layers: how many recurrent layers.
        cell: "lstm" or "rnn".
        dropout: variational dropout on the embedding output, between layers and before
            the output layer (one mask per sequence).
        recurrent_dropout: variational dropout on each layer's recurrent input.
        weight_drop: DropConnect on each layer's recurrent kernel (one mask per window).
        embedding_dropout: drops whole words of the vocabulary from the input embedding
            (one [V] mask per window, the kept rows scaled by 1 / (1 - rate)).
        tie_embeddings: share the embedding matrix with the output layer; when H != E a
            linear projection H -> E is added before it.
        init_scale: weights start uniform in [-init_scale, init_scale] (Zaremba et al.).
        precision: "float32", "mixed_bfloat16" or "mixed_float16" (16-bit matmuls;
            float32 states, gate math, logits and loss; float16 wants loss scaling, which
            the Trainer adds).
    """

    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int,
        hidden_dim: int,
        num_layers: int = 1,
        cell: str = "lstm",
        dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        tie_embeddings: bool = False,
        init_scale: float = 0.1,
        precision: str = "float32",
        weight_drop: float = 0.0,
        embedding_dropout: float = 0.0,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        check_precision(precision)
        if cell not in CELLS:
            raise ValueError(f"cell must be one of {sorted(CELLS)}, got {cell!r}")
        self.vocab_size = vocab_size
        self.embedding_dim = embedding_dim
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.cell = cell
        self.dropout = dropout
        self.recurrent_dropout = recurrent_dropout
        self.weight_drop = weight_drop
        self.embedding_dropout = embedding_dropout
        self.tie_embeddings = tie_embeddings
        self.init_scale = init_scale
        self.precision = precision
        self.supports_masking = True
        init = uniform_init(init_scale)
        self.embedding = keras.layers.Embedding(
            vocab_size, embedding_dim, embeddings_initializer=init, dtype=precision, name="embedding")
        self.recurrent = [
            CELLS[cell](hidden_dim, recurrent_dropout=recurrent_dropout, weight_drop=weight_drop,
                        kernel_initializer=init, recurrent_initializer=init, dtype=precision, name=f"{cell}_{i}")
            for i in range(num_layers)
        ]
        self.projection = (
            keras.layers.Dense(embedding_dim, use_bias=False, kernel_initializer=init, dtype=precision,
                               name="projection")
            if tie_embeddings and hidden_dim != embedding_dim else None)
        self.output_layer = (
            None if tie_embeddings else
            keras.layers.Dense(vocab_size, kernel_initializer=init, dtype=precision, name="output"))

    def build(self, input_shape=None) -> None:
        """Creates the weights: embedding, each recurrent layer's kernels for its input size, the
        output layer (tied: a bias only, plus a projection when hidden != embedding size).
        """
        if self.tie_embeddings:
            self.output_bias = self.add_weight(name="output_bias", shape=(self.vocab_size,), initializer="zeros")
        self.embedding.build((None, None))
        size = self.embedding_dim
        for layer in self.recurrent:
            layer.build((None, None, size))
            size = self.hidden_dim
        if self.projection is not None:
            self.projection.build((None, None, self.hidden_dim))
        if self.output_layer is not None:
            self.output_layer.build((None, None, self.hidden_dim))
        self.built = True

    @property
    def states_per_layer(self) -> int:
        """2 for LSTM (h, c), 1 for the vanilla RNN."""
        return len(CELLS[self.cell].state_names)

    def initial_state(self, batch_size) -> list[tf.Tensor]:
        """Zero states: a flat list of [B, H] float32 tensors."""
        return [tf.zeros([batch_size, self.hidden_dim], tf.float32)
                for _ in range(self.num_layers * self.states_per_layer)]

    def call(self, inputs, states=None, training=False, seed=None, mask=None):
        """ids [B, T] -> (logits [B, T, V] float32, new states). `seed` [2] keys dropout;
        `mask` [B, T] marks real positions (padding leaves the state unchanged)."""
        x, new_states, _ = self._features(inputs, states, training, seed, mask)
        return self._logits(x), new_states

    def nll(self, inputs, targets, states=None, training=False, seed=None):
        """ids [B, T], targets [B, T] -> (nll [B, T] float32, new states): the negative
        log-likelihood of each target, with the output layer and its cross-entropy fused
        (`trainer.layers.output_layer`), so the [B, T, V] logits are never materialised twice.

        Example:
            >>> lm = LanguageModel(vocab_size=12, embedding_dim=4, hidden_dim=4)
            >>> nll, states = lm.nll(tf.zeros([3, 5], tf.int32), tf.ones([3, 5], tf.int32))
            >>> nll.shape
            TensorShape([3, 5])
        """
        x, new_states, _ = self._features(inputs, states, training, seed, None)
        nll = output_layer_nll(x, targets, self._output_parts())
        return nll, new_states

    def regularized_nll(self, inputs, targets, states, seed, activation_penalty: float = 0.0,
                        temporal_penalty: float = 0.0):
        """Training (dropout on): ids [B, T], targets [B, T] -> (nll [B, T], penalty, new
        states). penalty, a float32 scalar for the per-token loss: AR, activation_penalty x
        mean of the last layer's dropped outputs squared, plus TAR, temporal_penalty x mean
        of (h_t - h_{t-1})^2 over its outputs before dropout (Merity et al. 2017).

        Example:
            >>> lm = LanguageModel(vocab_size=12, embedding_dim=4, hidden_dim=4)
            >>> nll, penalty, _ = lm.regularized_nll(tf.zeros([3, 5], tf.int32), tf.ones([3, 5], tf.int32),
            ...                                      None, tf.constant([1, 2]), 2.0, 1.0)
            >>> nll.shape, penalty.shape
            (TensorShape([3, 5]), TensorShape([]))
        """
        x, new_states, raw = self._features(inputs, states, True, seed, None)
        nll = output_layer_nll(x, targets, self._output_parts())
        penalty = tf.constant(0.0, tf.float32)
        if activation_penalty:
            penalty += activation_penalty * tf.reduce_mean(tf.square(tf.cast(x, tf.float32)))
        if temporal_penalty:
            raw = tf.cast(raw, tf.float32)
            penalty += temporal_penalty * tf.reduce_mean(tf.square(raw[:, 1:] - raw[:, :-1]))
        return nll, penalty, new_states

    def _features(self, inputs, states, training, seed, mask):
        """ids [B, T] -> (last recurrent layer's outputs after dropout [B, T, H], states,
        the same outputs before dropout)."""
        ids = tf.convert_to_tensor(inputs)
        batch = tf.shape(ids)[0]
        states = list(states) if states is not None else self.initial_state(batch)
        seed = tf.constant([0, 0], tf.int32) if seed is None else tf.cast(seed, tf.int32)
        x = self.embedding(ids)
        if training and self.embedding_dropout > 0:  # whole words: one [V] mask for the window
            words = dropout_mask([self.vocab_size], self.embedding_dropout, seed, Salt.EMBEDDING_WORDS, x.dtype)
            x = x * tf.gather(words, ids)[..., None]
        x = self._dropout(x, training, seed, Salt.EMBEDDING)
        new_states = []
        n = self.states_per_layer
        for i, layer in enumerate(self.recurrent):
            layer_seed = seed + tf.constant([0, Salt.LM_LAYER * (i + 1)], tf.int32)
            raw, layer_states = layer(x, initial_state=states[i * n:(i + 1) * n], training=training,
                                      seed=layer_seed, mask=mask)
            x = self._dropout(raw, training, seed, Salt.LAYER_OUTPUT + i)
            new_states += [tf.cast(s, tf.float32) for s in layer_states]
        return x, new_states, raw

    def step(self, token_ids, states):
        """One token per row: ids [B] -> (logits [B, V], new states). For the decoders:
        the same weights and equations as `call`, without the sequence loop."""
        x, new_states = self._stack_step(token_ids, states)
        return self._logits(x), new_states  # 2-D: one matmul, not a tensordot

    def _stack_step(self, token_ids, states):
        """ids [B] -> (the last layer's output [B, H], new states): embedding and every
        recurrent layer's step, no logits."""
        return self._layers_step(self.embedding(token_ids), states)

    def _layers_step(self, x, states, weights=None):
        """Embedded ids x [B, E] -> (the last layer's output [B, H], new states); `weights`:
        each recurrent layer's `step_weights()` (by default read here)."""
        n = self.states_per_layer
        new_states = []
        for i, layer in enumerate(self.recurrent):
            x, layer_states = layer.step(x, states[i * n:(i + 1) * n], None if weights is None else weights[i])
            new_states += layer_states
        return x, new_states

    def prime(self, prompt_ids, prompt_lengths):
        """Reads right-padded prompts [B, P] (lengths [B] >= 1): (logits after each one's
        last token [B, V], states after it). For the decoders.

        One loop over the positions runs every layer's `step` (the equations and values of
        `call`: the tests compare them exactly); a row's states stop at its length and only
        its last position's logits are computed, so memory is the states and [B, V], never
        P x V. One loop over the whole stack runs fewer graph nodes than a sequence loop per
        layer (`token_nll`'s windows), and each iteration reads `PRIME_UNROLL` positions
        with the weights read once: a graph loop's iteration costs a few nodes per loop
        variable, which is as much as one position's own work. Measured on an Intel Xeon
        (2 cores, `tf.function`), batch x prompt 1 x 64 in 4.19 ms instead of 5.93 one
        position per iteration, 1 x 256 in 15.3 instead of 22.5, 16 x 64 in 12.1 instead
        of 12.7; 1 x 4 level (1.22, 1.20), and `stream_start` runs 862 nodes instead of
        1,050.

        Example:
            >>> lm = LanguageModel(vocab_size=12, embedding_dim=4, hidden_dim=4)
            >>> logits, states = lm.prime(tf.ones([2, 9], tf.int32), tf.constant([9, 3]))
            >>> logits.shape
            TensorShape([2, 12])
        """
        ids = tf.cast(prompt_ids, tf.int32)
        lengths = tf.cast(prompt_lengths, tf.int32)
        batch, steps = tf.shape(ids)[0], tf.shape(ids)[1]
        unroll = PRIME_UNROLL
        chunks = (steps + unroll - 1) // unroll
        # Time-major embedded positions, padded to whole chunks (a padded position is past
        # every row's length, so it is never read into a state).
        embedded = tf.transpose(self.embedding(tf.pad(ids, [[0, 0], [0, chunks * unroll - steps]])), [1, 0, 2])

        def body(t, states, last):
            weights = [layer.step_weights() for layer in self.recurrent]  # once per chunk, not per position
            for j in range(unroll):
                x, new_states = self._layers_step(embedded[t + j], states, weights)
                reading = (t + j < lengths)[:, None]
                states = [tf.where(reading, new, old) for new, old in zip(new_states, states)]
                last = tf.where(tf.equal(t + j, lengths - 1)[:, None], tf.cast(x, tf.float32), last)
            return t + unroll, states, last

        last = tf.zeros([batch, self.hidden_dim], tf.float32)
        _, states, last = tf.while_loop(lambda t, *_: t < steps, body, (tf.constant(0), self.initial_state(batch), last),
                                        maximum_iterations=chunks)
        return self._logits(last), states

    def token_nll(self, inputs, targets, lengths, chunk_tokens: int = CHUNK_TOKENS):
        """ids [B, T], targets [B, T], lengths [B] -> nll [B, T] float32 of each target
        (0 past a row's length), in windows of positions as `prime` reads them, so the
        [B, T, V] logits are never materialised: memory is one window's [B, w, V].

        Example:
            >>> lm = LanguageModel(vocab_size=12, embedding_dim=4, hidden_dim=4)
            >>> lm.token_nll(tf.ones([2, 5], tf.int32), tf.ones([2, 5], tf.int32), tf.constant([5, 2])).shape
            TensorShape([2, 5])
        """
        lengths = tf.cast(lengths, tf.int32)
        targets = tf.cast(targets, tf.int32)
        nll = tf.TensorArray(tf.float32, size=0, dynamic_size=True, infer_shape=False)

        def read(x, window, positions, nll):
            window_targets = tf.gather(targets, positions[0], axis=1)
            values = output_layer_nll(x, window_targets, self._output_parts())
            real = positions < lengths[:, None]
            return nll.write(nll.size(), tf.transpose(tf.where(real, values, 0.0)))

        nll, _ = self._over_windows(inputs, lengths, chunk_tokens, read, nll)
        return tf.cond(tf.shape(inputs)[1] > 0, lambda: tf.transpose(nll.concat()),  # windows along time
                       lambda: tf.zeros([tf.shape(inputs)[0], 0]))

    def _over_windows(self, ids, lengths, chunk_tokens, read, carry):
        """Runs the recurrent layers over ids [B, T] window by window (masked past each
        row's length), calling `carry = read(features [B, w, H], window, positions [B, w],
        carry)` after each; -> (carry, states after each row's last token)."""
        ids = tf.cast(ids, tf.int32)
        batch, steps = tf.shape(ids)[0], tf.shape(ids)[1]
        window = tf.maximum(chunk_tokens // tf.maximum(batch, 1), 1)

        def body(start, states, carry):
            end = tf.minimum(start + window, steps)
            positions = tf.broadcast_to(tf.range(start, end)[None, :], [batch, end - start])
            mask = positions < lengths[:, None]
            x, states, _ = self._features(ids[:, start:end], states, False, None, mask)
            return end, states, read(x, window, positions, carry)

        _, states, carry = tf.while_loop(
            lambda start, *_: start < steps, body, (tf.constant(0), self.initial_state(batch), carry))
        return carry, states

    @property
    def output_embedding(self) -> keras.layers.Embedding:
        """The embedding whose matrix the tied output layer reuses."""
        return self.embedding

    def get_config(self) -> dict:
        """The constructor's arguments, for Keras saving."""
        return {
            **super().get_config(),
            "vocab_size": self.vocab_size, "embedding_dim": self.embedding_dim,
            "hidden_dim": self.hidden_dim, "num_layers": self.num_layers, "cell": self.cell,
            "dropout": self.dropout, "recurrent_dropout": self.recurrent_dropout,
            "tie_embeddings": self.tie_embeddings, "init_scale": self.init_scale,
            "precision": self.precision, "weight_drop": self.weight_drop,
            "embedding_dropout": self.embedding_dropout,
        }


def build_language_model(model_config: dict) -> LanguageModel:
    """A built model from `model_config.json`'s content (its weights still random)."""
    model = LanguageModel(**model_config)
    model.build()
    return model
