"""Token streaming over the export's `stream_start` / `stream_next` signatures.

TF Serving has no streaming RPC, but an LSTM's decoding state is small, so the caller
holds it: `stream_start` returns each row's first token and the state, and every
`stream_next` call (state, that token, the step) returns the next. `stream_events` drives
that loop over any way of calling a signature (a Session in this process, `lmpipe serve`'s
Predictor, a REST or gRPC client of stock TF Serving), so the SSE endpoint of `lmpipe serve`
(`:generate_stream`), `ServingClient.stream` and `lmpipe generate --stream` are one loop.

Events, one per new token of a row, then one last per row:

    {"index": 0, "step": 3, "token": 17, "piece": " cat"}
    {"index": 0, "done": true, "text": "the cat sat", "log_prob": -7.2, "tokens": 4,
     "stop_reason": "eos" | "max_new_tokens"}

The pieces of a row, joined, are the `text` its one-shot signature (greedy, sample, top_k,
top_p) returns for the same request.

Example:
    >>> call = lambda name, inputs: session_model.run(name, inputs)
    >>> for event in stream_events(call, stream_start_inputs(["the cat"], "top_p", seed=[3])):
    ...     print(event.get("piece", ""), end="")
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from pipeline.core.constants import EOS_ID
from serving.generation_module import SIGNATURE_KNOBS, STREAM_KNOBS
from serving.knobs import KNOB_SPECS

METHOD_IDS = {"greedy": 0, "sample": 1, "top_k": 2, "top_p": 3}  # the stream signatures' `method`


def stream_start_inputs(prompts: list[str], method: str, input_name: str = "prompt", **knobs) -> dict[str, list]:
    """`stream_start`'s inputs for `method` (greedy, sample, top_k, top_p): every stream
    knob, the method's own from `knobs` (a scalar or one per prompt) or their defaults."""
    if method not in METHOD_IDS:
        raise ValueError(f"streaming decodes with one of {sorted(METHOD_IDS)}, not {method!r}")
    unknown = set(knobs) - set(SIGNATURE_KNOBS[method])
    if unknown:
        raise ValueError(f"{method} does not take {sorted(unknown)}; it takes {list(SIGNATURE_KNOBS[method])}")
    batch = len(prompts)
    inputs = {input_name: list(prompts), "method": [METHOD_IDS[method]] * batch}
    for name in STREAM_KNOBS:
        value = knobs.get(name, KNOB_SPECS[name][1])
        inputs[name] = list(value) if isinstance(value, (list, tuple)) else [value] * batch
    return inputs


def stream_events(call: Callable[[str, dict], dict], start_inputs: dict[str, list],
                  input_name: str = "prompt") -> Iterator[dict]:
    """Runs a stream: `call(signature, inputs) -> outputs` (arrays); yields the events."""
    outputs = call("stream_start", start_inputs)
    knobs = {k: v for k, v in start_inputs.items() if k != input_name}
    batch = len(start_inputs[input_name])
    pieces, counts, ended = [[] for _ in range(batch)], [0] * batch, [False] * batch
    last = [None] * batch
    step = 0
    while True:
        tokens, done = np.asarray(outputs["token"]), np.asarray(outputs["done"])
        for row in range(batch):
            if ended[row]:
                continue
            if counts[row] < int(start_inputs["max_new_tokens"][row]):
                piece = _text(outputs["piece"][row])
                pieces[row].append(piece)
                counts[row] += 1
                last[row] = int(tokens[row])
                yield {"index": row, "step": step, "token": int(tokens[row]), "piece": piece}
            if bool(done[row]):
                ended[row] = True
                yield {"index": row, "done": True, "text": "".join(pieces[row]),
                       "log_prob": float(np.asarray(outputs["log_prob"])[row]), "tokens": counts[row],
                       "stop_reason": "eos" if last[row] == EOS_ID else "max_new_tokens"}
        if all(ended):
            return
        step += 1
        outputs = call("stream_next", {"state": np.asarray(outputs["state"]), "token": tokens.astype(np.int32),
                                       "step": [step] * batch, **knobs})


def _text(value) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)
