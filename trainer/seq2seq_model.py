"""The sequence-to-sequence model: an LSTM encoder, an LSTM decoder with attention.

    encoder   source embedding -> dropout -> N_enc LSTM layers (optionally bidirectional:
              a second LSTM reads each source backwards, outputs concatenated)
    bridge    one linear layer from all final encoder states to the decoder's (h, c)s
    decoder   target embedding [; previous attentional vector, with input feeding]
              -> N LSTM layers -> attention over the encoder outputs
              -> attentional vector tanh(W_c [context; h]) -> dropout -> logits

The same weights serve two calls:
- `model(source_ids [B, S], target_in [B, T], source_lengths=None)` -> logits [B, T, V]
  float32 (teacher forcing; `return_attention=True` adds the weights [B, T, S]);
- `model.encode(source_ids, source_lengths)` -> states, then `model.step(ids [B], states)`
  -> (logits [B, V], states), one token at a time: all the decoders (serving/) see.

Decoder states are a flat list of batch-first float32 tensors (beam search tiles and
gathers every entry along axis 0), in this order:

    h_1, c_1, ..., h_N, c_N   [B, H]     the decoder LSTM layers
    feed                      [B, H]     the last attentional vector (zeros at the start)
    memory                    [B, S, D]  encoder outputs (D = H, or 2H bidirectional)
    keys                      [B, S, K]  the attention's projection of memory
    source_mask               [B, S]     float32, 1 at real source positions

`step` passes the last three through unchanged. Sources are right-padded; `source_lengths`
defaults to the count of non-<pad> ids. Targets start with <bos> (`prime` feeds it).

Example:
    >>> model = build_seq2seq_model({"source_vocab_size": 11, "target_vocab_size": 13,
    ...                              "embedding_dim": 4, "hidden_dim": 4})
    >>> model(tf.ones([2, 5], tf.int32), tf.ones([2, 3], tf.int32)).shape
    TensorShape([2, 3, 13])
    >>> logits, states = model.step(tf.fill([2], 2), model.encode(tf.ones([2, 5], tf.int32), [5, 3]))
    >>> logits.shape, len(states)
    (TensorShape([2, 13]), 6)
"""

from __future__ import annotations

import keras
import tensorflow as tf

from pipeline.core.constants import BOS_ID, PAD_ID
from trainer.language_model import CHUNK_TOKENS
from trainer.layers.attention import get_attention
from trainer.layers.lstm import LSTM
from trainer.layers.output_layer import output_layer_nll, windowed_output_nll
from trainer.layers.recurrent_base import dropout_mask
from trainer.model_parts import OutputAndDropout, Salt, check_precision, uniform_init

PASS_THROUGH = 3  # memory, keys, source_mask: the last state entries, never changed by `step`


@keras.saving.register_keras_serializable(package="lmpipe")
class Seq2SeqModel(OutputAndDropout, keras.Model):
    """An LSTM encoder-decoder with Luong or Bahdanau attention.

    Args:
        source_vocab_size, target_vocab_size: the vocabularies (reserved ids included).
        embedding_dim: E of both embeddings.
        hidden_dim: H of every LSTM layer (per direction in the encoder).
        num_layers: decoder LSTM layers.
        encoder_layers: encoder LSTM layers (None or 0: as many as the decoder).
        cell: "lstm" (the only cell of this model).
        attention: "luong" (multiplicative) or "bahdanau" (additive).
        attention_score: Luong's score, "general" or "dot" (dot needs D == H).
        bidirectional_encoder: a backward LSTM per encoder layer beside the forward one.
        input_feeding: feed the previous attentional vector with the next target token.
        dropout: variational dropout on embeddings, between layers and on the
            attentional vector (one mask per sequence).
        recurrent_dropout: variational dropout on each layer's recurrent input.
        tie_embeddings: share the target embedding with the output layer (a projection
            H -> E is added when they differ).
        init_scale: weights start uniform in [-init_scale, init_scale].
        precision: "float32", "mixed_bfloat16" or "mixed_float16" (16-bit matmuls; float32
            states, attention softmax, logits and loss; float16 wants loss scaling).
    """

    # The decoders' prompt is the source, not the start of the output: it is not history
    # for repetition rules, and its ids are source-vocabulary ids.
    prompt_is_prefix = False

    def __init__(
        self,
        source_vocab_size: int,
        target_vocab_size: int,
        embedding_dim: int,
        hidden_dim: int,
        num_layers: int = 1,
        encoder_layers: int | None = None,
        cell: str = "lstm",
        attention: str = "luong",
        attention_score: str = "general",
        bidirectional_encoder: bool = False,
        input_feeding: bool = True,
        dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        tie_embeddings: bool = False,
        init_scale: float = 0.1,
        precision: str = "float32",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        check_precision(precision)
        if cell != "lstm":
            raise ValueError(f"the seq2seq model has LSTM layers only; cell must be 'lstm', got {cell!r}")
        self.source_vocab_size = source_vocab_size
        self.target_vocab_size = target_vocab_size
        self.embedding_dim = embedding_dim
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.encoder_layers = encoder_layers or num_layers
        self.cell = cell
        self.attention_kind = attention
        self.attention_score = attention_score
        self.bidirectional_encoder = bidirectional_encoder
        self.input_feeding = input_feeding
        self.dropout = dropout
        self.recurrent_dropout = recurrent_dropout
        self.tie_embeddings = tie_embeddings
        self.init_scale = init_scale
        self.precision = precision
        self.memory_dim = hidden_dim * (2 if bidirectional_encoder else 1)
        self._make_layers()

    def _make_layers(self) -> None:
        """The embeddings, encoder (forward and, if bidirectional, backward LSTMs), the
        bridge to the decoder's initial states, the decoder LSTMs, attention and output."""
        init, precision, hidden_dim = uniform_init(self.init_scale), self.precision, self.hidden_dim

        def lstm(name):
            return LSTM(hidden_dim, recurrent_dropout=self.recurrent_dropout, kernel_initializer=init,
                        recurrent_initializer=init, dtype=precision, name=name)

        def dense(units, name, **kw):
            return keras.layers.Dense(units, kernel_initializer=init, dtype=precision, name=name, **kw)

        def embedding(vocab_size, name):
            return keras.layers.Embedding(vocab_size, self.embedding_dim, embeddings_initializer=init,
                                          dtype=precision, name=name)

        self.source_embedding = embedding(self.source_vocab_size, "source_embedding")
        self.target_embedding = embedding(self.target_vocab_size, "target_embedding")
        self.encoder_forward = [lstm(f"encoder_{i}") for i in range(self.encoder_layers)]
        self.encoder_backward = ([lstm(f"encoder_backward_{i}") for i in range(self.encoder_layers)]
                                 if self.bidirectional_encoder else [])
        self.bridge = dense(2 * self.num_layers * hidden_dim, "bridge")
        self.decoder = [lstm(f"decoder_{i}") for i in range(self.num_layers)]
        self.attention = get_attention(self.attention_kind, hidden_dim, score=self.attention_score,
                                       dtype=precision, name="attention")
        self.attention_output = dense(hidden_dim, "attention_output", use_bias=False, activation="tanh")
        self.projection = (dense(self.embedding_dim, "projection", use_bias=False)
                           if self.tie_embeddings and hidden_dim != self.embedding_dim else None)
        self.output_layer = None if self.tie_embeddings else dense(self.target_vocab_size, "output")

    def build(self, input_shape=None) -> None:
        """Creates every weight for the embedding, memory and hidden sizes (so weights load before
        any call).
        """
        e, h, d = self.embedding_dim, self.hidden_dim, self.memory_dim
        if self.tie_embeddings:
            self.output_bias = self.add_weight(name="output_bias", shape=(self.target_vocab_size,),
                                               initializer="zeros")
        self.source_embedding.build((None, None))
        self.target_embedding.build((None, None))
        for i, layer in enumerate(self.encoder_forward + self.encoder_backward):
            layer.build((None, None, e if i % self.encoder_layers == 0 else d))
        self.bridge.build((None, 2 * self.encoder_layers * d))
        for i, layer in enumerate(self.decoder):
            layer.build((None, None, (e + (h if self.input_feeding else 0)) if i == 0 else h))
        self.attention.build((None, None, h), (None, None, d))
        self.attention_output.build((None, None, d + h))
        if self.projection is not None:
            self.projection.build((None, None, h))
        if self.output_layer is not None:
            self.output_layer.build((None, None, h))
        self.built = True

    # ---- encoder -------------------------------------------------------------------

    def _encode(self, source_ids, source_lengths, training, seed):
        """-> (memory [B, S, D], keys, mask [B, S] float32, decoder initial states)."""
        ids = tf.convert_to_tensor(source_ids)
        lengths = _lengths(ids, source_lengths)
        mask = tf.sequence_mask(lengths, tf.shape(ids)[1])
        x = self._dropout(self.source_embedding(ids), training, seed, Salt.EMBEDDING)
        finals = []
        for i, forward in enumerate(self.encoder_forward):
            out, states = forward(x, mask=mask, training=training,
                                  seed=seed + [0, Salt.ENCODER_FORWARD + 1000 * i])
            finals += states
            if self.bidirectional_encoder:
                backward = self.encoder_backward[i]
                reverse = tf.reverse_sequence(x, lengths, seq_axis=1, batch_axis=0)
                back, back_states = backward(reverse, mask=mask, training=training,
                                             seed=seed + [0, Salt.ENCODER_BACKWARD + 1000 * i])
                out = tf.concat([out, tf.reverse_sequence(back, lengths, seq_axis=1, batch_axis=0)], -1)
                finals += back_states
            x = self._dropout(out, training, seed, Salt.LAYER_OUTPUT + i)
        memory = tf.cast(x, tf.float32)
        bridged = tf.cast(self.bridge(tf.concat([tf.cast(s, tf.float32) for s in finals], -1)), tf.float32)
        initial = tf.split(bridged, 2 * self.num_layers, axis=-1)
        return memory, tf.cast(self.attention.keys(memory), tf.float32), tf.cast(mask, tf.float32), initial

    def encode(self, source_ids, source_lengths=None) -> list[tf.Tensor]:
        """Right-padded sources [B, S] (lengths [B] >= 1) -> the decoder states before the
        first target token (see the module docstring for the layout)."""
        memory, keys, mask, initial = self._encode(source_ids, source_lengths, False, tf.constant([0, 0], tf.int32))
        feed = tf.zeros([tf.shape(memory)[0], self.hidden_dim], tf.float32)
        return initial + [feed, memory, keys, mask]

    # ---- decoder -------------------------------------------------------------------

    def call(self, source_ids, target_in=None, source_lengths=None, training=False, seed=None,
             return_attention=False):
        """Teacher forcing: sources [B, S] and decoder inputs [B, T] (<bos> + target) ->
        logits [B, T, V] float32 (and attention weights [B, T, S] with `return_attention`).
        `seed` [2] keys dropout, so a training step is a pure function of its inputs."""
        if target_in is None:
            raise ValueError("Seq2SeqModel needs target_in: call model(source_ids, target_in)")
        attentional, weights = self._teacher_forced(source_ids, target_in, source_lengths, training, seed)
        logits = self._logits(attentional)
        return (logits, weights) if return_attention else logits

    def nll(self, source_ids, target_in, target_out, training=False, seed=None):
        """Teacher forcing with the output layer and cross-entropy fused
        (`trainer.layers.output_layer`): -> nll [B, T] float32 of each `target_out` token
        (padding included: the caller weights it)."""
        attentional, _ = self._teacher_forced(source_ids, target_in, None, training, seed)
        return output_layer_nll(attentional, target_out, self._output_parts())

    def token_nll(self, source_ids, target_in, target_out, source_lengths, target_lengths,
                  chunk_tokens: int = CHUNK_TOKENS):
        """For scoring: teacher forcing -> nll [B, T] float32 of each `target_out` token, 0
        past `target_lengths` [B]; the output layer runs a window of positions at a time
        (`windowed_output_nll`), so [B, T, V] logits are never materialised."""
        attentional, _ = self._teacher_forced(source_ids, target_in, source_lengths, False, None)
        return windowed_output_nll(attentional, tf.cast(target_out, tf.int32), target_lengths,
                                   self._output_parts(), chunk_tokens)

    def attention_weights(self, source_ids, target_in, source_lengths=None):
        """Teacher forcing -> the attention weights [B, T, S] alone (no output layer)."""
        return self._teacher_forced(source_ids, target_in, source_lengths, False, None)[1]

    def _teacher_forced(self, source_ids, target_in, source_lengths, training, seed):
        """-> (attentional vectors after dropout [B, T, H], attention weights [B, T, S])."""
        seed = tf.constant([0, 0], tf.int32) if seed is None else tf.cast(seed, tf.int32)
        memory, keys, mask, states = self._encode(source_ids, source_lengths, training, seed)
        y = self._dropout(self.target_embedding(tf.convert_to_tensor(target_in)), training, seed,
                          Salt.TARGET_EMBEDDING)
        if self.input_feeding:
            attentional, weights = self._decode_fed(y, states, memory, keys, mask, training, seed)
        else:
            for i, layer in enumerate(self.decoder):
                y, _ = layer(y, initial_state=states[2 * i:2 * i + 2], training=training,
                             seed=seed + [0, Salt.DECODER + 1000 * i])
                y = self._dropout(y, training, seed, Salt.DECODER_OUTPUT + i)
            attentional, weights = self._attend(y, memory, keys, mask)
        return self._dropout(attentional, training, seed, Salt.ATTENTIONAL), weights

    def _decode_fed(self, y, states, memory, keys, mask, training, seed):
        """Input feeding makes each step depend on the last: a loop over layer steps, with
        the same dropout as the sequence call (input masks drawn once per sequence)."""
        batch, steps = tf.shape(y)[0], tf.shape(y)[1]
        rec_masks = [
            dropout_mask([batch, self.hidden_dim], self.recurrent_dropout, seed + [0, Salt.DECODER + 1000 * i], 2,
                         tf.float32) if training and self.recurrent_dropout > 0 else None
            for i in range(self.num_layers)]
        between = [self._dropout_mask(batch, self.hidden_dim, training, seed, Salt.DECODER_OUTPUT + i)
                   for i in range(self.num_layers)]
        ys = tf.TensorArray(y.dtype, size=steps).unstack(tf.transpose(y, [1, 0, 2]))
        outs = tf.TensorArray(tf.float32, size=steps)
        attn = tf.TensorArray(tf.float32, size=steps)
        feed = tf.zeros([batch, self.hidden_dim], tf.float32)

        def body(t, states, feed, outs, attn):
            x = tf.concat([ys.read(t), tf.cast(feed, y.dtype)], -1)
            new_states = []
            for i, layer in enumerate(self.decoder):
                h, c = states[2 * i:2 * i + 2]
                x, layer_states = layer.step(x, [h * rec_masks[i] if rec_masks[i] is not None else h, c])
                if between[i] is not None:
                    x = x * tf.cast(between[i], x.dtype)
                new_states += layer_states
            att, weights = self._attend(x[:, None, :], memory, keys, mask)
            return t + 1, new_states, att[:, 0], outs.write(t, att[:, 0]), attn.write(t, weights[:, 0])

        _, _, _, outs, attn = tf.while_loop(
            lambda t, *_: t < steps, body, (0, list(states), feed, outs, attn), maximum_iterations=steps)
        return tf.transpose(outs.stack(), [1, 0, 2]), tf.transpose(attn.stack(), [1, 0, 2])

    def _attend(self, h, memory, keys, mask):
        """Decoder outputs h [B, T, H] -> (attentional vectors [B, T, H] float32, weights)."""
        context, weights = self.attention(h, memory, keys=keys, source_mask=mask)
        both = tf.concat([tf.cast(context, self.attention_output.compute_dtype),
                          tf.cast(h, self.attention_output.compute_dtype)], -1)
        return tf.cast(self.attention_output(both), tf.float32), weights

    def step_with_attention(self, token_ids, states):
        """One target token per row: ids [B] -> (logits [B, V], new states, attention [B, S])."""
        n = 2 * self.num_layers
        layer_states, feed, passed = states[:n], states[n], list(states[-PASS_THROUGH:])
        memory, keys, mask = passed
        x = self.target_embedding(token_ids)
        if self.input_feeding:
            x = tf.concat([x, tf.cast(feed, x.dtype)], -1)
        new_states = []
        for i, layer in enumerate(self.decoder):
            x, s = layer.step(x, layer_states[2 * i:2 * i + 2])
            new_states += s
        att, weights = self._attend(x[:, None, :], memory, keys, mask)
        logits = self._logits(att)[:, 0, :]
        return logits, new_states + [att[:, 0]] + passed, weights[:, 0]

    def step(self, token_ids, states):
        """One target token per row: ids [B] -> (logits [B, V], new states)."""
        logits, states, _ = self.step_with_attention(token_ids, states)
        return logits, states

    def prime(self, source_ids, source_lengths):
        """For the decoders: encodes the sources and feeds <bos>: (logits of the first
        target token [B, V], states after <bos>)."""
        states = self.encode(source_ids, source_lengths)
        return self.step(tf.fill([tf.shape(source_ids)[0]], BOS_ID), states)

    # ---- shared --------------------------------------------------------------------

    @property
    def output_embedding(self) -> keras.layers.Embedding:
        """The target embedding, which the tied output layer reuses."""
        return self.target_embedding

    def _dropout_mask(self, batch, size, training, seed, salt):
        if not training or self.dropout <= 0:
            return None
        return dropout_mask([batch, size], self.dropout, seed, salt, tf.float32)

    def get_config(self) -> dict:
        """The constructor's arguments, for Keras saving."""
        return {
            **super().get_config(),
            "source_vocab_size": self.source_vocab_size, "target_vocab_size": self.target_vocab_size,
            "embedding_dim": self.embedding_dim, "hidden_dim": self.hidden_dim,
            "num_layers": self.num_layers, "encoder_layers": self.encoder_layers, "cell": self.cell,
            "attention": self.attention_kind, "attention_score": self.attention_score,
            "bidirectional_encoder": self.bidirectional_encoder, "input_feeding": self.input_feeding,
            "dropout": self.dropout, "recurrent_dropout": self.recurrent_dropout,
            "tie_embeddings": self.tie_embeddings, "init_scale": self.init_scale, "precision": self.precision,
        }


def _lengths(ids, source_lengths):
    if source_lengths is not None:
        return tf.cast(source_lengths, tf.int32)
    return tf.reduce_sum(tf.cast(tf.not_equal(ids, PAD_ID), tf.int32), axis=1)


def build_seq2seq_model(model_config: dict) -> Seq2SeqModel:
    """A built model from `model_config.json`'s content (its weights still random).

    Takes the constructor's arguments; `"kind": "seq2seq"` may be present, and a single
    `vocab_size` stands for a vocabulary shared by source and target."""
    config = dict(model_config)
    kind = config.pop("kind", "seq2seq")
    if kind != "seq2seq":
        raise ValueError(f"build_seq2seq_model builds kind 'seq2seq', got {kind!r}")
    if "vocab_size" in config:
        vocab = config.pop("vocab_size")
        config.setdefault("source_vocab_size", vocab)
        config.setdefault("target_vocab_size", vocab)
    model = Seq2SeqModel(**config)
    model.build()
    return model
