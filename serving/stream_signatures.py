"""The stream signatures of an export, `stream_start` and `stream_next` (a mixin of
`GenerationModule`; the layout of the state is in that module's docstring).

One token per call with greedy, sample, top_k or top_p, chosen per row by `method`; the
client holds the state [B, S]. Both signatures run the decoders' own step
(`generate.choose_token`), so the pieces joined are the one-shot signature's `text`.

Example:
    >>> functions = module.stream_functions()   # {"stream_start": tf.function, "stream_next": ...}
"""

from __future__ import annotations

import tensorflow as tf

from serving.decoders.generate import (STREAM_METHODS, DecodeState, PerRowStrategy, choose_token, method_knobs,
                              new_tokens, output_prefix, seen_tokens, start_state)
from serving.knobs import Knobs, assert_rows

STATE_COUNTERS = ("cur_len", "generated", "log_prob", "finished")  # a stream state's first columns


class StreamSignatures:
    """The stream signatures' tf.functions and the state's packing and checks; the class
    that mixes this in provides model, tokenizer, the limits, `banned`, `_texts`,
    `encode_prompts`, `prompt_input`, `stream_knobs` and `_checks`."""

    def stream_functions(self) -> dict:
        """{"stream_start": tf.function, "stream_next": tf.function} (trace them with
        `input_specs`)."""
        return {"stream_start": self.stream_start_function(), "stream_next": self.stream_next_function()}

    def stream_start_function(self):
        """The tf.function of `stream_start`: prompts -> the first token of each stream."""
        @tf.function
        def fn(**inputs):
            prompt, method = inputs.pop(self.prompt_input), inputs.pop("method")
            batch = tf.shape(prompt)[0]
            knobs = Knobs.from_inputs(inputs, batch)
            with tf.control_dependencies(self._stream_checks(batch, knobs, method)):
                knobs = Knobs(*[tf.identity(k) for k in knobs])
                prompt, method = tf.identity(prompt), tf.identity(method)
            ids, lengths = self.encode_prompts(prompt, self.prompt_input)
            prefix_ids, _ = output_prefix(self.model, ids, lengths)
            slots = self._history_width() - tf.shape(prefix_ids)[1]
            state = start_state(self.model, ids, lengths, knobs, slots)
            return self._stream_outputs(state, tf.zeros([batch], tf.int32), knobs, method,
                                        self._stream_context(ids, lengths), first=True)

        return fn

    def stream_next_function(self):
        """The tf.function of `stream_next`: (state, the previous token) -> the next token."""
        @tf.function
        def fn(**inputs):
            packed, token, step, method = (inputs.pop(k) for k in ("state", "token", "step", "method"))
            batch = tf.shape(packed)[0]
            knobs = Knobs.from_inputs(inputs, batch)
            checks = self._stream_checks(batch, knobs, method) + self._state_checks(packed, token, step)
            with tf.control_dependencies(checks):  # the width first: nothing slices a bad state
                knobs = Knobs(*[tf.identity(k) for k in knobs])
                packed, token, step, method = (tf.identity(x) for x in (packed, token, step, method))
            state, context = self._unpack_state(packed)
            with tf.control_dependencies(self._resume_checks(state, token, step)):
                token = tf.identity(token)
            logits, states = self.model.step(token, self._model_states(state.states, context))
            uses_seen = tf.reduce_any(tf.not_equal(knobs.repetition_penalty, 1.0))
            seen = tf.cond(uses_seen, lambda: seen_tokens(state.history, state.cur_len, tf.shape(logits)[1]),
                           lambda: tf.zeros_like(logits))
            state = state._replace(logits=logits, states=states, seen=seen)
            return self._stream_outputs(state, step, knobs, method, context)

        return fn

    @property
    def stream_width(self) -> int:
        """S, the columns of this export's stream state (layout: the module docstring)."""
        return len(STATE_COUNTERS) + sum(self._carried_widths()) + self._history_width() + self._context_width()

    def _carried_widths(self) -> list[int]:
        """The widths of the model states a stream state carries (LM: all of them)."""
        return [int(s.shape[-1]) for s in self.model.initial_state(1)]

    def _carried(self, states) -> list[tf.Tensor]:
        return list(states)

    def _model_states(self, carried, context) -> list[tf.Tensor]:
        """The model's states from the carried ones and the state's context columns."""
        return list(carried)

    def _history_width(self) -> int:
        prefix = self.max_prompt_tokens + 1 if getattr(self.model, "prompt_is_prefix", True) else 0
        return prefix + self.max_new_tokens  # + 1: the leading <eos> of every prompt

    def _context_width(self) -> int:
        return 0

    def _stream_context(self, ids, lengths) -> tf.Tensor:
        """[B, C] float32: what else the state needs from the prompts (LM: nothing)."""
        return tf.zeros([tf.shape(ids)[0], 0], tf.float32)

    def _stream_outputs(self, state: DecodeState, step, knobs: Knobs, method, context,
                        first: bool = False) -> dict[str, tf.Tensor]:
        """Chooses each row's next token from `state.logits`; the outputs of both stream
        signatures (`first`: stream_start's, where nothing was generated before)."""
        token, after = choose_token(state, step, method_knobs(knobs, method), PerRowStrategy(method), self.banned)
        return {"state": self._pack_state(after, context), "token": token,
                "piece": self._piece(state, after, first), "done": after.finished, "log_prob": after.log_prob}

    def _piece(self, before: DecodeState, after: DecodeState, first: bool = False):
        """[B] strings: the text the new token adds, text(tokens so far) minus text(before)
        (every tokenizer kind's text of a token sequence starts with that of its prefix);
        `first`: before holds no generated token, so its text is empty and not computed."""
        prefix = after.cur_len - after.generated
        new = self._texts(*new_tokens(after.history, prefix, after.generated, self.max_new_tokens))
        if first:
            return new
        old = self._texts(*new_tokens(before.history, prefix, before.generated, self.max_new_tokens))
        start = tf.strings.length(old)
        return tf.strings.substr(new, start, tf.strings.length(new) - start)

    def _pack_state(self, state: DecodeState, context) -> tf.Tensor:
        counters = [state.cur_len, state.generated, state.log_prob, state.finished]
        columns = [tf.cast(c, tf.float32)[:, None] for c in counters]
        columns += [tf.cast(s, tf.float32) for s in self._carried(state.states)]
        return tf.concat(columns + [tf.cast(state.history, tf.float32), context], axis=1)

    def _unpack_state(self, packed):
        """[B, S] -> (a DecodeState with the carried states and no logits or seen, context)."""
        widths = [1] * len(STATE_COUNTERS) + self._carried_widths() + [self._history_width(), self._context_width()]
        parts = tf.split(packed, widths, axis=1)
        cur_len, generated, log_prob, finished = (p[:, 0] for p in parts[:len(STATE_COUNTERS)])
        state = DecodeState(
            finished=finished > 0.5, history=tf.cast(parts[-2], tf.int32), cur_len=tf.cast(cur_len, tf.int32),
            generated=tf.cast(generated, tf.int32), log_prob=log_prob, seen=None, logits=None,
            states=parts[len(STATE_COUNTERS):-2])
        return state, parts[-1]

    def _state_bounds(self):
        """Per column of a stream state: (low [S], high [S], integral [S]) it may hold."""
        inf = float("inf")
        vocab = self.tokenizer.vocab_size
        history = self._history_width()
        rows = [(0, history, True), (0, self.max_new_tokens, True), (-inf, inf, False), (0, 1, True)]
        rows += [(-inf, inf, False)] * sum(self._carried_widths()) + [(0, vocab - 1, True)] * history
        rows += self._context_bounds()
        low, high, integral = zip(*rows)
        return (tf.constant(low, tf.float32), tf.constant(high, tf.float32), tf.constant(integral))

    def _context_bounds(self) -> list[tuple]:
        return []

    def _stream_checks(self, batch, knobs: Knobs, method) -> list[tf.Operation]:
        """Every knob's range (`_checks`) and `method`'s, one value per prompt."""
        checks = self._checks(batch, knobs, self.stream_knobs)
        checks.append(tf.debugging.assert_equal(tf.shape(method)[0], batch,
                                                message="method must have one value per prompt"))
        names = ", ".join(f"{i} {name}" for i, name in enumerate(STREAM_METHODS))
        ok = tf.logical_and(method >= 0, method < len(STREAM_METHODS))
        return checks + [assert_rows(ok, method, "method", f"[0, {len(STREAM_METHODS) - 1}] ({names})")]

    def _state_checks(self, packed, token, step) -> list[tf.Operation]:
        """`state` has this export's width S, then `token` and `step` one value per prompt,
        `step` in [0, max_new_tokens - 1], and every state column a value it can hold."""
        width = self.stream_width
        message = tf.strings.format(
            f"state must have {width} columns (the stream state of this export, as stream_start and "
            f"stream_next return it), got {{}}", tf.shape(packed)[1])
        wide = tf.debugging.Assert(tf.equal(tf.shape(packed)[1], width), [message])
        batch = tf.shape(packed)[0]
        checks = [tf.debugging.assert_equal(tf.shape(x)[0], batch, message=f"{name} must have one value per prompt")
                  for name, x in (("token", token), ("step", step))]
        checks.append(assert_rows(tf.logical_and(step >= 0, step < self.max_new_tokens), step, "step",
                                   f"[0, {self.max_new_tokens - 1}]"))
        checks.append(assert_rows(tf.logical_and(token >= 0, token < self.tokenizer.vocab_size), token, "token",
                                   f"[0, {self.tokenizer.vocab_size - 1}]"))
        with tf.control_dependencies([wide]):
            low, high, integral = self._state_bounds()
            fits = tf.logical_and(tf.math.is_finite(packed), tf.logical_and(packed >= low, packed <= high))
            fits = tf.logical_and(fits, tf.logical_or(~integral, tf.equal(packed, tf.round(packed))))
            bad = tf.cast(tf.argmin(tf.cast(tf.reshape(fits, [-1]), tf.int32)), tf.int32)
            message = tf.strings.format(
                "state of prompt {} has {} in column {}, a value no stream state of this export holds: "
                "send back the state the previous stream call returned",
                (bad // width, tf.gather(tf.reshape(packed, [-1]), bad), bad % width))
            checks.append(tf.debugging.Assert(tf.reduce_all(fits), [message]))
        return [wide] + checks

    def _resume_checks(self, state: DecodeState, token, step) -> list[tf.Operation]:
        """A row still streaming must send the token it was given and the next step."""
        active = tf.logical_not(state.finished)
        last = tf.gather(state.history, tf.maximum(state.cur_len - 1, 0), batch_dims=1)
        return [
            assert_rows(tf.logical_or(~active, tf.equal(step, state.generated)), step, "step",
                         "the index of the token to produce (the tokens streamed so far)", state.generated),
            assert_rows(tf.logical_or(~active, tf.equal(token, last)), token, "token",
                         "the token the previous stream call returned", last),
        ]
