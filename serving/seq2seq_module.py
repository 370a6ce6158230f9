"""The SavedModel module of a sequence-to-sequence model: raw source strings in, target
strings out, with the language model's decoders and knobs unchanged.

Signatures (every input [B], every output dense):

    greedy, sample, top_k, top_p, beam_search
        source + the knobs of the same signature of `GenerationModule`
        -> text, token_ids, lengths, log_prob (beam: [B, W, ...]); greedy also
           attention [B, T_out, T_in] float32 (rows past each output's length and
           columns past each source's length are 0)
    score   source, target -> log_prob [B], tokens [B], perplexity [B] of the target

The source is tokenized with the source tokenizer exactly as its records were (an
<eos> appended when `tokenizer.add_eos`); outputs are detokenized with the target one.
The decoders reach the model through `prime` (encode, then <bos>) and `step`; the
encoder outputs ride in the decoder state.

Example:
    >>> module = Seq2SeqGenerationModule(model, pair_tokenizers(model_dir), max_new_tokens=100)
    >>> module.signatures()["greedy"](source=tf.constant(["ein hund ."]), ...)["text"]
"""

from __future__ import annotations

import tensorflow as tf

from pipeline.constants import BOS_ID, PAD_ID
from pipeline.tokenizer import Tokenizer
from serving.generation_module import SIGNATURE_KNOBS, GenerationModule
from serving.knobs import KNOB_SPECS


def seq2seq_input_specs(signature: str) -> dict[str, tf.TensorSpec]:
    """The named [B] inputs of a seq2seq signature."""
    specs = {"source": tf.TensorSpec([None], tf.string, name="source")}
    if signature == "score":
        specs["target"] = tf.TensorSpec([None], tf.string, name="target")
        return specs
    for name in SIGNATURE_KNOBS[signature]:
        specs[name] = tf.TensorSpec([None], KNOB_SPECS[name][0], name=name)
    return specs


class Seq2SeqGenerationModule(GenerationModule):
    """`GenerationModule` for a `Seq2SeqModel`: `source` in place of `prompt`."""

    prompt_input = "source"

    def __init__(self, model, tokenizers: dict[str, Tokenizer], max_new_tokens: int) -> None:
        super().__init__(model, tokenizers["target"], max_new_tokens)
        self.source_tokenizer = tokenizers["source"]

    def input_specs(self, signature: str) -> dict[str, tf.TensorSpec]:
        return seq2seq_input_specs(signature)

    def encode_prompts(self, sources):
        """[B] source strings -> (ids [B, S] int32, lengths [B]); an empty source fails
        with a clear message (the encoder needs one token)."""
        ids = self.source_tokenizer.encode_lines(sources)
        lengths = tf.cast(ids.row_lengths(), tf.int32)
        check = tf.debugging.assert_positive(
            lengths, message="every source needs at least one token (empty source string)")
        with tf.control_dependencies([check]):
            return tf.cast(ids.to_tensor(PAD_ID), tf.int32), tf.identity(lengths)

    def _outputs(self, name, ids, lengths, out) -> dict[str, tf.Tensor]:
        outputs = super()._outputs(name, ids, lengths, out)
        if name == "greedy":
            outputs["attention"] = self._attention(ids, lengths, out.token_ids, out.lengths)
        return outputs

    def _attention(self, source_ids, source_lengths, token_ids, lengths):
        """[B, T_out, T_in]: the weights each output token was chosen with (teacher-forced
        on the chosen tokens, which the greedy loop's steps equal)."""
        start = tf.fill([tf.shape(token_ids)[0], 1], BOS_ID)
        target_in = tf.concat([start, token_ids[:, :-1]], axis=1)
        _, weights = self.model(source_ids, target_in, source_lengths=source_lengths, return_attention=True)
        rows = tf.sequence_mask(lengths, tf.shape(token_ids)[1], tf.float32)
        return weights * rows[:, :, None]

    def score_function(self):
        @tf.function
        def fn(**inputs):
            source_ids, source_lengths = self.encode_prompts(inputs["source"])
            target = self.tokenizer.encode_lines(inputs["target"])  # ends with <eos>
            target_out = tf.cast(target.to_tensor(PAD_ID), tf.int32)
            tokens = tf.cast(target.row_lengths(), tf.int32)
            start = tf.fill([tf.shape(target_out)[0], 1], BOS_ID)
            target_in = tf.concat([start, target_out[:, :-1]], axis=1)
            logits = self.model(source_ids, target_in, source_lengths=source_lengths)
            nll = tf.nn.sparse_softmax_cross_entropy_with_logits(target_out, logits)
            nll = tf.where(tf.sequence_mask(tokens, tf.shape(target_out)[1]), nll, 0.0)
            log_prob = -tf.reduce_sum(nll, axis=1)
            perplexity = tf.exp(-log_prob / tf.cast(tf.maximum(tokens, 1), tf.float32))
            return {"log_prob": log_prob, "tokens": tokens, "perplexity": perplexity}

        return fn
