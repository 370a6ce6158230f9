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

    stream_start prompt, method + the greedy inputs + temperature, seed, k, p
    stream_next  state [B, S], token, step, method + the same knobs
    -> state [B, S] float32, token [B] int32, piece [B] string, done [B] bool,
       log_prob [B] (the running total)

Streaming (TF Serving has no streaming RPC, so the client holds the decoder): the
stream signatures decode one token per call with greedy, sample, top_k or top_p, chosen
per row by `method` (an index of `generate.STREAM_METHODS`); the knobs must be the same
in every call of a stream. `step` is the index of the token to produce (stream_start
produces 0; then 1, 2, ...) and keys the RNG as `generate`'s loop counter does, so the
pieces joined are the `text` of the one-shot signature of that method, exactly, and the
last `log_prob` its `log_prob`. A row is done at <eos> or its `max_new_tokens`; later
calls give it token <pad> and piece "". Both loops share `generate.choose_token`.

The state is a float32 matrix (ids below 2^24 are exact) of S = `stream_width` columns:
    0 cur_len, 1 generated, 2 log_prob, 3 finished (0/1)
    the model's states before reading `token`, concatenated (LM: [h_1, c_1, ...])
    history: the prompt (with its leading <eos>) then the output, <pad>-filled to
        max_prompt_tokens + 1 + max_new_tokens (seq2seq: the output, max_new_tokens)
    then, for seq2seq, the source ids (max_prompt_tokens) and the source length
The repetition penalty's seen set is the set of history tokens, rebuilt each call.

Each prompt is read after an <eos> (the start of a line, as in training). Knob values are
checked in the graph (tf.debugging asserts, ranges in `serving.knobs.KNOB_RANGES`) before
anything reads them, so a bad request fails at once with a clear InvalidArgument on TF
Serving as on `lmpipe serve`. A prompt of more than `max_prompt_tokens` tokens is refused
the same way. The decoders never choose <pad>, <bos> or (unless `allow_unk`) <unk>.

Example:
    >>> module = GenerationModule(model, Tokenizer.from_dir(model_dir), max_new_tokens=256)
    >>> module.signatures()["greedy"](prompt=tf.constant(["the"]), ...)["text"]
"""

from __future__ import annotations

import tensorflow as tf
from tensorflow.python.trackable.data_structures import NoDependency

from pipeline.core.constants import EOS_ID, UNK_ID
from pipeline.core.tokenizer import Tokenizer
from serving.decoders.beam_search import beam_search
from serving.decoders.generate import generate
from serving.decoders.logits_processors import NEVER_TEXT
from serving.decoders.strategies import get_strategy
from serving.knobs import KNOB_SPECS, Knobs, knob_asserts
from serving.stream_signatures import StreamSignatures

BASE_KNOBS = ("max_new_tokens", "min_new_tokens", "repetition_penalty", "no_repeat_ngram_size")
SIGNATURE_KNOBS = {
    "greedy": BASE_KNOBS,
    "sample": BASE_KNOBS + ("temperature", "seed"),
    "top_k": BASE_KNOBS + ("temperature", "seed", "k"),
    "top_p": BASE_KNOBS + ("temperature", "seed", "p"),
    "beam_search": BASE_KNOBS + ("beam_width", "length_penalty"),
}
GENERATION_SIGNATURES = tuple(SIGNATURE_KNOBS)
STREAM_KNOBS = BASE_KNOBS + ("temperature", "seed", "k", "p")  # every method's knobs
STREAM_SIGNATURES = ("stream_start", "stream_next")
DEFAULT_MAX_PROMPT_TOKENS = 1024


def input_specs(signature: str, strings_input: str = "prompt",
                score_inputs: tuple[str, ...] = ("text",)) -> dict[str, tf.TensorSpec]:
    """The named inputs of a signature: `strings_input` ("prompt"; seq2seq: "source")
    and the signature's knobs, all [B]; `score` takes the strings `score_inputs` alone
    (seq2seq: source and target); `stream_next` takes `state` [B, S], `token` and `step`
    in place of the strings.

    Example:
        >>> list(input_specs("stream_next"))[:4]
        ['state', 'token', 'step', 'method']
        >>> list(input_specs("score", "source", ("source", "target")))
        ['source', 'target']
    """
    if signature == "score":
        return {name: tf.TensorSpec([None], tf.string, name=name) for name in score_inputs}
    if signature == "stream_next":
        specs = {"state": tf.TensorSpec([None, None], tf.float32, name="state"),
                 "token": tf.TensorSpec([None], tf.int32, name="token"),
                 "step": tf.TensorSpec([None], tf.int32, name="step")}
    else:
        specs = {strings_input: tf.TensorSpec([None], tf.string, name=strings_input)}
    if signature in STREAM_SIGNATURES:
        specs["method"] = tf.TensorSpec([None], tf.int32, name="method")
    for name in STREAM_KNOBS if signature in STREAM_SIGNATURES else SIGNATURE_KNOBS[signature]:
        specs[name] = tf.TensorSpec([None], KNOB_SPECS[name][0], name=name)
    return specs


class GenerationModule(StreamSignatures, tf.Module):
    """Raw strings in, generated strings out; everything in the graph.

    Args:
        model: the trained model (`step`, `initial_state`, `prime`).
        tokenizer: its tokenizer (the target side's, for seq2seq).
        max_new_tokens: the largest `max_new_tokens` a request may ask for.
        max_prompt_tokens: a longer prompt (or text to score) is refused with an
            InvalidArgument naming the prompt, its token count and this limit.
        allow_unk: let the decoders choose `<unk>` (by default they never do).
    """

    prompt_input = "prompt"  # the name of the strings input of generation signatures
    score_inputs = ("text",)  # the strings inputs of `score`
    stream_knobs = STREAM_KNOBS  # the knobs of the stream signatures (StreamSignatures)

    def __init__(self, model, tokenizer: Tokenizer, max_new_tokens: int,
                 max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS, allow_unk: bool = False) -> None:
        super().__init__(name="lmpipe_generation")
        # TF Serving restores variables with the saver's restore op, which assigns only the
        # tf.Variables this module tracks; a Keras 3 variable merely wraps one (`.value`).
        # So the module tracks those, keyed by the variable's path, and not the Keras model
        # (whose wrappers would save every weight a second time).
        self.model = NoDependency(model)
        self.model_variables = {v.path: v.value for v in model.variables}
        if len(self.model_variables) != len(model.variables):
            raise ValueError("the model's variables must have distinct paths to be exported")
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.max_prompt_tokens = max_prompt_tokens
        self.banned = tuple(t for t in NEVER_TEXT if not (allow_unk and t == UNK_ID))

    def signatures(self) -> dict[str, tf.types.experimental.ConcreteFunction]:
        """One concrete function per signature, each with named TensorSpecs."""
        functions = {name: self.generation_function(name) for name in GENERATION_SIGNATURES}
        functions["score"] = self.score_function()
        functions.update(self.stream_functions())
        return {name: fn.get_concrete_function(**self.input_specs(name)) for name, fn in functions.items()}

    def input_specs(self, signature: str) -> dict[str, tf.TensorSpec]:
        """The named [B] inputs of one of this module's signatures."""
        return input_specs(signature, self.prompt_input, self.score_inputs)

    def encode_prompts(self, prompts, what: str = "prompt"):
        """[B] strings -> (ids [B, P] int32 with a leading <eos>, lengths [B]); a prompt of
        more than `max_prompt_tokens` tokens fails (`what` names it in the message)."""
        ids = self.tokenizer.tokenize(prompts)
        lengths = tf.cast(ids.row_lengths(), tf.int32)
        with tf.control_dependencies([self._check_length(lengths, what)]):
            dense = tf.cast(ids.to_tensor(0), tf.int32)  # dense before the <eos>: a ragged concat is dozens of ops
        start = tf.fill([tf.shape(prompts)[0], 1], EOS_ID)
        return tf.concat([start, dense], axis=1), lengths + 1

    def _check_length(self, lengths, what: str):
        """Asserts every row of `lengths` [B] int32 is within `max_prompt_tokens`."""
        row = tf.argmax(lengths, output_type=tf.int32)
        longest = tf.reduce_max(tf.concat([lengths, [0]], 0))
        message = tf.strings.format(
            f"{what} {{}} has {{}} tokens, over the limit of {self.max_prompt_tokens} "
            f"(export.max_prompt_tokens): shorten it", (row, longest))
        return tf.debugging.Assert(longest <= self.max_prompt_tokens, [message])

    def _texts(self, token_ids, lengths):
        """ids [..., T] with lengths [...] -> the texts [...] of each row's first `lengths` ids."""
        flat_ids = tf.reshape(token_ids, [-1, tf.shape(token_ids)[-1]])
        texts = self.tokenizer.detokenize(flat_ids, tf.reshape(lengths, [-1]))
        return tf.reshape(texts, tf.shape(lengths))

    def _checks(self, batch, knobs: Knobs, names) -> list[tf.Operation]:
        """Asserts one value per prompt for every knob, and every knob's range."""
        checks = [tf.debugging.assert_equal(tf.shape(getattr(knobs, name))[0], batch,
                                            message=f"{name} must have one value per prompt")
                  for name in names]
        return checks + knob_asserts(knobs, names, self.max_new_tokens)

    def generation_function(self, name: str):
        """The tf.function of one generation signature (trace with `self.input_specs(name)`)."""
        names = SIGNATURE_KNOBS[name]

        @tf.function
        def fn(**inputs):  # keyword-only, so every input is named in the signature
            prompt = inputs.pop(self.prompt_input)
            batch = tf.shape(prompt)[0]
            knobs = Knobs.from_inputs(inputs, batch)
            # Nothing reads a knob or a prompt before every check has passed, so a bad
            # value fails before any tiling, tokenizing or looping.
            with tf.control_dependencies(self._checks(batch, knobs, names)):
                knobs = Knobs(*[tf.identity(k) for k in knobs])
                prompt = tf.identity(prompt)
            ids, lengths = self.encode_prompts(prompt, self.prompt_input)
            if name == "beam_search":
                out = beam_search(self.model, ids, lengths, knobs, self.banned)
            else:
                out = generate(self.model, ids, lengths, knobs, get_strategy(name), self.banned)
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
        """The tf.function of the `score` signature: the model's log-probability of each
        text (read after an <eos>, its own <eos> included when the tokenizer adds one),
        computed window by window (`LanguageModel.token_nll`), never as [B, T, V]."""
        @tf.function
        def fn(**inputs):
            text = inputs["text"]
            ids, lengths = self.encode_prompts(text, "text")
            if self.tokenizer.spec.add_eos:  # the line's own <eos> is predicted too
                ids = tf.pad(ids, [[0, 0], [0, 1]])
                ids = tf.tensor_scatter_nd_update(
                    ids, tf.stack([tf.range(tf.shape(ids)[0]), lengths], 1), tf.fill(tf.shape(lengths), EOS_ID))
                lengths += 1
            tokens = lengths - 1
            nll = self.model.token_nll(ids[:, :-1], ids[:, 1:], tokens)
            return score_outputs(nll, tokens)

        return fn


def score_outputs(nll, tokens) -> dict[str, tf.Tensor]:
    """nll [B, T] (0 past each row's `tokens` [B]) -> the score signature's outputs."""
    log_prob = -tf.reduce_sum(nll, axis=1)
    perplexity = tf.exp(-log_prob / tf.cast(tf.maximum(tokens, 1), tf.float32))
    return {"log_prob": log_prob, "tokens": tokens, "perplexity": perplexity}

