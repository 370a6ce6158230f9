"""The tf.Module that becomes the SavedModel: tokenizer, model and one function per signature.

Signatures (every input has a batch dimension [B], every output is dense):

    greedy       prompt, max_new_tokens, min_new_tokens, repetition_penalty, no_repeat_ngram_size
    sample       the greedy inputs + temperature, seed
    top_k        the sample inputs + k
    top_p        the sample inputs + p
    beam_search  the greedy inputs + beam_width, length_penalty
    score        text
    -> text [B] (beam: [B, W]), token_ids [B, T] ([B, W, T]), lengths [B] ([B, W]),
       log_prob [B] ([B, W]); score -> log_prob [B], tokens [B], perplexity [B]

Each prompt is read after an <eos> (the start of a line, as in training). Knob values are
checked in the graph (tf.debugging asserts), so a bad request fails with a clear
InvalidArgument error on TF Serving as on `lmpipe serve`.

Example:
    >>> module = GenerationModule(model, Tokenizer.from_dir(model_dir), max_new_tokens=256)
    >>> module.signatures()["greedy"](prompt=tf.constant(["the"]), ...)["text"]
"""

from __future__ import annotations

import tensorflow as tf

from pipeline.constants import EOS_ID
from pipeline.tokenizer import Tokenizer
from serving.beam_search import beam_search
from serving.generate import generate
from serving.knobs import KNOB_SPECS, Knobs
from serving.strategies import get_strategy

BASE_KNOBS = ("max_new_tokens", "min_new_tokens", "repetition_penalty", "no_repeat_ngram_size")
SIGNATURE_KNOBS = {
    "greedy": BASE_KNOBS,
    "sample": BASE_KNOBS + ("temperature", "seed"),
    "top_k": BASE_KNOBS + ("temperature", "seed", "k"),
    "top_p": BASE_KNOBS + ("temperature", "seed", "p"),
    "beam_search": BASE_KNOBS + ("beam_width", "length_penalty"),
}
GENERATION_SIGNATURES = tuple(SIGNATURE_KNOBS)
MAX_BEAM_WIDTH = 64


def input_specs(signature: str) -> dict[str, tf.TensorSpec]:
    """The named [B] inputs of a signature."""
    if signature == "score":
        return {"text": tf.TensorSpec([None], tf.string, name="text")}
    specs = {"prompt": tf.TensorSpec([None], tf.string, name="prompt")}
    for name in SIGNATURE_KNOBS[signature]:
        specs[name] = tf.TensorSpec([None], KNOB_SPECS[name][0], name=name)
    return specs


class GenerationModule(tf.Module):
    """Raw strings in, generated strings out; everything in the graph."""

    prompt_input = "prompt"  # the name of the strings input of generation signatures

    def __init__(self, model, tokenizer: Tokenizer, max_new_tokens: int) -> None:
        super().__init__(name="lmpipe_generation")
        self.model = model
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens

    def signatures(self) -> dict[str, tf.types.experimental.ConcreteFunction]:
        """One concrete function per signature, each with named TensorSpecs."""
        functions = {name: self.generation_function(name) for name in GENERATION_SIGNATURES}
        functions["score"] = self.score_function()
        return {name: fn.get_concrete_function(**self.input_specs(name)) for name, fn in functions.items()}

    def input_specs(self, signature: str) -> dict[str, tf.TensorSpec]:
        """The named [B] inputs of one of this module's signatures."""
        return input_specs(signature)

    def encode_prompts(self, prompts):
        """[B] strings -> (ids [B, P] int32 with a leading <eos>, lengths [B])."""
        ids = self.tokenizer.tokenize(prompts)
        start = tf.fill([tf.shape(prompts)[0], 1], tf.constant(EOS_ID, tf.int64))
        ids = tf.concat([start, ids], axis=1)
        return tf.cast(ids.to_tensor(0), tf.int32), tf.cast(ids.row_lengths(), tf.int32)

    def _texts(self, token_ids, lengths):
        mask = tf.sequence_mask(lengths, tf.shape(token_ids)[-1])
        flat_ids = tf.reshape(token_ids, [-1, tf.shape(token_ids)[-1]])
        flat_mask = tf.reshape(mask, tf.shape(flat_ids))
        texts = self.tokenizer.detokenize(tf.ragged.boolean_mask(flat_ids, flat_mask))
        return tf.reshape(texts, tf.shape(lengths))

    def _check(self, batch, knobs: Knobs, names):
        checks = []
        for name in names:
            checks.append(tf.debugging.assert_equal(
                tf.shape(getattr(knobs, name))[0], batch,
                message=f"{name} must have one value per prompt"))
        if "max_new_tokens" in names:
            checks.append(tf.debugging.assert_less_equal(
                knobs.max_new_tokens, self.max_new_tokens,
                message=f"max_new_tokens must be at most {self.max_new_tokens}"))
            checks.append(tf.debugging.assert_non_negative(knobs.max_new_tokens, message="max_new_tokens must be >= 0"))
        if "k" in names:
            checks.append(tf.debugging.assert_positive(knobs.k, message="k must be >= 1"))
        if "p" in names:
            checks.append(tf.debugging.assert_positive(knobs.p, message="p must be in (0, 1]"))
            checks.append(tf.debugging.assert_less_equal(knobs.p, 1.0, message="p must be in (0, 1]"))
        if "temperature" in names:
            checks.append(tf.debugging.assert_positive(knobs.temperature, message="temperature must be > 0"))
        if "beam_width" in names:
            checks.append(tf.debugging.assert_positive(knobs.beam_width, message="beam_width must be >= 1"))
            checks.append(tf.debugging.assert_less_equal(
                knobs.beam_width, MAX_BEAM_WIDTH, message=f"beam_width must be at most {MAX_BEAM_WIDTH}"))
        if "repetition_penalty" in names:
            checks.append(tf.debugging.assert_positive(
                knobs.repetition_penalty, message="repetition_penalty must be > 0"))
        return checks

    def generation_function(self, name: str):
        """The tf.function of one generation signature (trace with `self.input_specs(name)`)."""
        names = SIGNATURE_KNOBS[name]

        @tf.function
        def fn(**inputs):  # keyword-only, so every input is named in the signature
            prompt = inputs.pop(self.prompt_input)
            batch = tf.shape(prompt)[0]
            knobs = Knobs.from_inputs(inputs, batch)
            with tf.control_dependencies(self._check(batch, knobs, names)):
                ids, lengths = self.encode_prompts(prompt)
            if name == "beam_search":
                out = beam_search(self.model, ids, lengths, knobs)
            else:
                out = generate(self.model, ids, lengths, knobs, get_strategy(name))
            return self._outputs(name, ids, lengths, out)

        return fn

    def _outputs(self, name, ids, lengths, out) -> dict[str, tf.Tensor]:
        """A signature's outputs from the decoder's; `ids`, `lengths`: its prompts."""
        return {
            "text": self._texts(out.token_ids, out.lengths),
            "token_ids": out.token_ids,
            "lengths": out.lengths,
            "log_prob": out.log_prob,
        }

    def score_function(self):
        """The tf.function of the `score` signature."""
        @tf.function
        def fn(**inputs):
            text = inputs["text"]
            ids, lengths = self.encode_prompts(text)
            if self.tokenizer.spec.add_eos:  # the line's own <eos> is predicted too
                ids = tf.pad(ids, [[0, 0], [0, 1]])
                ids = tf.tensor_scatter_nd_update(
                    ids, tf.stack([tf.range(tf.shape(ids)[0]), lengths], 1), tf.fill(tf.shape(lengths), EOS_ID))
                lengths += 1
            inputs, targets = ids[:, :-1], ids[:, 1:]
            mask = tf.sequence_mask(lengths - 1, tf.shape(inputs)[1])
            logits, _ = self.model(inputs, training=False, mask=mask)
            nll = tf.nn.sparse_softmax_cross_entropy_with_logits(targets, logits)
            nll = tf.where(mask, nll, 0.0)
            tokens = lengths - 1
            log_prob = -tf.reduce_sum(nll, axis=1)
            perplexity = tf.exp(-log_prob / tf.cast(tf.maximum(tokens, 1), tf.float32))
            return {"log_prob": log_prob, "tokens": tokens, "perplexity": perplexity}

        return fn
