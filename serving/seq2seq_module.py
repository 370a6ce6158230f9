"""The SavedModel module of a sequence-to-sequence model: raw source strings in, target
strings out, with the language model's decoders and knobs unchanged.

Signatures (every input [B], every output dense):

    greedy, sample, top_k, top_p, beam_search
        source + the knobs of the same signature of `GenerationModule`
        -> text, token_ids, lengths, log_prob (beam: [B, W, ...]); greedy also
           attention [B, T_out, T_in] float32 (rows past each output's length and
           columns past each source's length are 0)
    score   source, target -> log_prob [B], tokens [B], perplexity [B] of the target
    stream_start, stream_next
        `GenerationModule`'s, with `source` in place of `prompt`

The source is tokenized with the source tokenizer exactly as its records were (an
<eos> appended when `tokenizer.add_eos`); outputs are detokenized with the target one.
The decoders reach the model through `prime` (encode, then <bos>) and `step`; the
encoder outputs ride in the decoder state. A stream state carries the decoder's LSTM
states and attentional vector, and the source ids instead of the encoder outputs
([S_in, D + K + 1] a row): `stream_next` encodes the source again (padded to the widest
source of the batch, as `stream_start` and the one-shot signatures read it), so the
state is 2 N H + H + max_new_tokens + max_prompt_tokens + 5 floats wide.

Example:
    >>> module = Seq2SeqGenerationModule(model, pair_tokenizers(model_dir), max_new_tokens=100)
    >>> module.signatures()["greedy"](source=tf.constant(["ein hund ."]), ...)["text"]
"""

from __future__ import annotations

import tensorflow as tf

from pipeline.core.constants import PAD_ID
from pipeline.core.pair_records import decoder_input
from pipeline.core.tokenizer import Tokenizer
from serving.generation_module import DEFAULT_MAX_PROMPT_TOKENS, GenerationModule, score_outputs


class Seq2SeqGenerationModule(GenerationModule):
    """`GenerationModule` for a `Seq2SeqModel`: `source` in place of `prompt`; sources and
    score targets of more than `max_prompt_tokens` tokens are refused."""

    prompt_input = "source"
    score_inputs = ("source", "target")

    def __init__(self, model, tokenizers: dict[str, Tokenizer], max_new_tokens: int,
                 max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS, allow_unk: bool = False) -> None:
        super().__init__(model, tokenizers["target"], max_new_tokens, max_prompt_tokens, allow_unk)
        self.source_tokenizer = tokenizers["source"]

    def encode_prompts(self, sources, what: str = "source"):
        """[B] source strings -> (ids [B, S] int32, lengths [B]); an empty source, or one
        over `max_prompt_tokens`, fails with a clear message (the encoder needs a token)."""
        ids = self.source_tokenizer.encode_lines(sources)
        lengths = tf.cast(ids.row_lengths(), tf.int32)
        checks = [self._check_length(lengths, what), tf.debugging.assert_positive(
            lengths, message="every source needs at least one token (empty source string)")]
        with tf.control_dependencies(checks):
            return tf.cast(ids.to_tensor(PAD_ID), tf.int32), tf.identity(lengths)

    def _carried_widths(self) -> list[int]:
        return [self.model.hidden_dim] * self._carried_count()

    def _carried_count(self) -> int:
        """h_1, c_1, ..., h_N, c_N, feed: the decoder states before the encoder's outputs."""
        return 2 * self.model.num_layers + 1

    def _carried(self, states) -> list[tf.Tensor]:
        return list(states[:self._carried_count()])

    def _context_width(self) -> int:
        return self.max_prompt_tokens + 1  # the source ids, then its length

    def _stream_context(self, ids, lengths) -> tf.Tensor:
        ids = tf.pad(ids, [[0, 0], [0, self.max_prompt_tokens - tf.shape(ids)[1]]])
        return tf.cast(tf.concat([ids, lengths[:, None]], axis=1), tf.float32)

    def _context_bounds(self) -> list[tuple]:
        ids = (0, self.source_tokenizer.vocab_size - 1, True)
        return [ids] * self.max_prompt_tokens + [(1, self.max_prompt_tokens, True)]

    def _model_states(self, carried, context) -> list[tf.Tensor]:
        """The carried decoder states + the encoder outputs of the source in `context`."""
        lengths = tf.cast(context[:, -1], tf.int32)
        ids = tf.cast(context[:, :tf.reduce_max(lengths)], tf.int32)
        encoded = self.model.encode(ids, lengths)
        return list(carried) + encoded[self._carried_count():]

    def _outputs(self, name, ids, lengths, out) -> dict[str, tf.Tensor]:
        outputs = super()._outputs(name, ids, lengths, out)
        if name == "greedy":
            outputs["attention"] = self._attention(ids, lengths, out.token_ids, out.lengths)
        return outputs

    def _attention(self, source_ids, source_lengths, token_ids, lengths):
        """[B, T_out, T_in]: the weights each output token was chosen with (teacher-forced
        on the chosen tokens, which the greedy loop's steps equal)."""
        weights = self.model.attention_weights(source_ids, decoder_input(token_ids), source_lengths)
        rows = tf.sequence_mask(lengths, tf.shape(token_ids)[1], tf.float32)
        return weights * rows[:, :, None]

    def score_function(self):
        """The `score` signature: source [B], target [B] strings -> each target's summed log-
        probability given its source, token count and perplexity; sources and targets over the
        limit are refused.
        """
        @tf.function
        def fn(**inputs):
            source_ids, source_lengths = self.encode_prompts(inputs["source"])
            target = self.tokenizer.encode_lines(inputs["target"])  # ends with <eos>
            tokens = tf.cast(target.row_lengths(), tf.int32)
            with tf.control_dependencies([self._check_length(tokens, "target")]):
                target_out = tf.cast(target.to_tensor(PAD_ID), tf.int32)
            nll = self.model.token_nll(source_ids, decoder_input(target_out), target_out, source_lengths, tokens)
            return score_outputs(nll, tokens)

        return fn
