"""The stream signatures (stream_start, stream_next) on TF Serving's Session path: the
pieces of a stream, joined, are the one-shot signature's text exactly (word, char and
subword tokenizers, a seq2seq model), and a bad state, step or token is refused."""

import numpy as np
import pytest
import tensorflow as tf

from pipeline.core.constants import RESERVED_TOKENS
from pipeline.core.tokenizer import Tokenizer, TokenizerSpec
from serving.decoders.generate import STREAM_METHODS
from serving.generation_module import STREAM_KNOBS, GenerationModule
from serving.saved_model_session import SessionModel
from serving.seq2seq_module import Seq2SeqGenerationModule
from serving.warmup import WARMUP_FILE, read_warmup_requests, write_warmup_requests
from trainer.language_model import build_language_model
from trainer.seq2seq_model import build_seq2seq_model

from conftest import session_path_signatures

MAX_NEW, MAX_PROMPT = 12, 16
WORDS = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran", *[f"w{i}" for i in range(62)]]  # V = 74 > 64
SUBWORDS = ["play", "##ing", "##ed", "un", "##der", "##stand", "cat", "##s", ".", ",", "the", "##e", "a", "##n"]
CHARS = list("abcdehilmnorst .")
VOCABS = {"word": WORDS, "char": CHARS, "subword": SUBWORDS}
PROMPTS = {"word": ["the cat", "a dog ran on the mat w3 w7", "mat"],
           "char": ["the cat", "a dot sat on.", "l"],
           "subword": ["playing", "the cats understand playing a cat.", "un"]}
KNOBS = {  # per row; export max_new_tokens 12
    "max_new_tokens": [12, 7, 12], "min_new_tokens": [0, 2, 0], "repetition_penalty": [1.0, 1.2, 1.0],
    "no_repeat_ngram_size": [0, 0, 2], "temperature": [1.0, 0.8, 1.5], "k": [5, 40, 2], "p": [0.9, 0.5, 0.99],
}


def export(module, path) -> str:
    """Saves `module` as TF Serving would load it, with its warmup records."""
    signatures = module.signatures()
    tf.saved_model.save(module, str(path), signatures=signatures)
    write_warmup_requests(str(path / "assets.extra" / WARMUP_FILE), "m", signatures)
    return str(path)


def _lm_module(kind):
    tf.keras.utils.set_random_seed(3)
    tokenizer = Tokenizer(TokenizerSpec(kind=kind), vocab=[*RESERVED_TOKENS, *VOCABS[kind]])
    model = build_language_model({"vocab_size": tokenizer.vocab_size, "embedding_dim": 8, "hidden_dim": 8,
                                  "num_layers": 2, "init_scale": 1.0})
    return GenerationModule(model, tokenizer, max_new_tokens=MAX_NEW, max_prompt_tokens=MAX_PROMPT)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """kind -> (export dir, SessionModel, module) for word/char/subword LMs and a seq2seq."""
    root = tmp_path_factory.mktemp("stream")
    out = {}
    for kind in VOCABS:
        module = _lm_module(kind)
        path = export(module, root / kind / "1")
        out[kind] = (path, SessionModel(path), module)
    tf.keras.utils.set_random_seed(4)
    source = Tokenizer(TokenizerSpec(kind="word"), vocab=[*RESERVED_TOKENS, "ein", "hund", "katze", "."])
    target = Tokenizer(TokenizerSpec(kind="subword"), vocab=[*RESERVED_TOKENS, *SUBWORDS])
    model = build_seq2seq_model({"source_vocab_size": source.vocab_size, "target_vocab_size": target.vocab_size,
                                 "embedding_dim": 6, "hidden_dim": 6, "num_layers": 2, "encoder_layers": 1,
                                 "bidirectional_encoder": True, "init_scale": 1.0})
    module = Seq2SeqGenerationModule(model, {"source": source, "target": target}, MAX_NEW, MAX_PROMPT)
    path = export(module, root / "seq2seq" / "1")
    out["seq2seq"] = (path, SessionModel(path), module)
    yield out
    for _, session, _ in out.values():
        session.close()


def stream(model: SessionModel, strings_input, prompts, method, **knobs):
    """Streams a batch to the end: (texts joined from the pieces, tokens per row, the
    last log_prob, the states' width, calls made)."""
    rows = len(prompts)
    common = {"method": [method] * rows, **knobs}
    out = model.run("stream_start", {strings_input: prompts, **common})
    pieces, tokens, calls = [[p] for p in out["piece"]], [[t] for t in out["token"]], 1
    while not out["done"].all():
        assert calls < MAX_NEW, "a stream ran past max_new_tokens"
        out = model.run("stream_next", {"state": out["state"], "token": out["token"], "step": [calls] * rows,
                                        **common})
        for row in range(rows):
            pieces[row].append(out["piece"][row])
            tokens[row].append(out["token"][row])
        calls += 1
    texts = [b"".join(p) for p in pieces]
    return texts, tokens, out["log_prob"], out["state"].shape[1], calls


def one_shot(model: SessionModel, signature, strings_input, prompts, **knobs):
    names = model.input_dtypes(signature)
    return model.run(signature, {strings_input: prompts, **{k: v for k, v in knobs.items() if k in names}})


def stream_matches_one_shot(model, strings_input, prompts, method, **knobs):
    """Asserts the stream of `method` (a name) gives the one-shot signature's texts,
    tokens and log_prob for the same request; returns the texts."""
    texts, tokens, log_prob, _, _ = stream(model, strings_input, prompts, STREAM_METHODS.index(method), **knobs)
    ref = one_shot(model, method, strings_input, prompts, **knobs)
    assert texts == ref["text"].tolist(), (method, knobs.get("seed"))
    for row, n in enumerate(ref["lengths"]):
        assert tokens[row][:n] == ref["token_ids"][row][:n].tolist() and not any(tokens[row][n:])
    np.testing.assert_allclose(log_prob, ref["log_prob"], rtol=1e-6, atol=1e-6)
    return texts


@pytest.mark.parametrize("kind", list(VOCABS))
def test_stream_pieces_join_to_the_one_shot_text_for_every_method(exports, kind):
    _, model, module = exports[kind]
    prompts = PROMPTS[kind]
    texts = stream_matches_one_shot(model, "prompt", prompts, "greedy", **KNOBS, seed=[0, 0, 0])
    assert any(texts)
    distinct = set()
    for method in ("sample", "top_k", "top_p"):
        for seed in (0, 1, 7):
            distinct.add(tuple(stream_matches_one_shot(model, "prompt", prompts, method, **KNOBS,
                                                       seed=[seed, seed + 1, seed + 2])))
    assert len(distinct) > 3  # the seeds and methods do give different texts
    _, _, _, width, _ = stream(model, "prompt", prompts, 0, **KNOBS, seed=[0, 0, 0])
    hidden_states = 2 * 2 * 8  # (h, c) x 2 layers x H
    assert width == module.stream_width == 4 + hidden_states + (MAX_PROMPT + 1 + MAX_NEW)


def test_top_p_nucleus_past_the_head_and_plain_knobs(exports):
    """p = 0.99 on a flat 74-token distribution needs more than the 64-token head."""
    _, model, _ = exports["word"]
    knobs = {**KNOBS, "p": [0.99] * 3, "temperature": [3.0] * 3}
    texts = [stream_matches_one_shot(model, "prompt", PROMPTS["word"], "top_p", **knobs, seed=[seed] * 3)
             for seed in (2, 3)]
    assert all(all(row) for row in texts) and texts[0] != texts[1]  # real texts, and the seed matters
    plain = {name: [value[0]] for name, value in KNOBS.items()}
    assert stream_matches_one_shot(model, "prompt", ["the"], "sample", **plain, seed=[11])[0]


def test_mixed_methods_in_one_batch_each_as_its_own_signature(exports):
    _, model, _ = exports["word"]
    prompts = ["the cat", "a dog", "on the mat", "ran"]
    knobs = {**{k: [v[0]] * 4 for k, v in KNOBS.items()}, "temperature": [0.5, 1.0, 1.3, 0.9],
             "seed": [5, 6, 7, 8]}
    out = model.run("stream_start", {"prompt": prompts, "method": [0, 1, 2, 3], **knobs})
    pieces, step = [[p] for p in out["piece"]], 1
    while not out["done"].all():
        out = model.run("stream_next", {"state": out["state"], "token": out["token"], "step": [step] * 4,
                                        "method": [0, 1, 2, 3], **knobs})
        for row, piece in enumerate(out["piece"]):
            pieces[row].append(piece)
        step += 1
    for row, method in enumerate(STREAM_METHODS):
        alone = one_shot(model, method, "prompt", prompts[row:row + 1], **{k: v[row:row + 1] for k, v in knobs.items()})
        assert b"".join(pieces[row]) == alone["text"][0], method  # greedy ignores temperature 0.5


def test_seq2seq_stream_equals_greedy_and_sampling(exports):
    _, model, module = exports["seq2seq"]
    sources = ["ein hund .", "katze", "ein katze ein hund hund ."]
    stream_matches_one_shot(model, "source", sources, "greedy", **KNOBS, seed=[0, 0, 0])
    for seed in (0, 9):
        stream_matches_one_shot(model, "source", sources, "sample", **KNOBS, seed=[seed, seed, seed + 1])
        stream_matches_one_shot(model, "source", sources, "top_k", **KNOBS, seed=[seed, seed, seed + 1])
    _, _, _, width, _ = stream(model, "source", sources, 0, **KNOBS, seed=[0, 0, 0])
    assert width == module.stream_width == 2 * 2 * 6 + 6 + MAX_NEW + MAX_PROMPT + 5


@pytest.mark.parametrize("kind", ["char", "seq2seq"])
def test_every_signature_has_a_warmup_record_that_the_session_path_answers(exports, kind):
    path, _, module = exports[kind]
    records = read_warmup_requests(f"{path}/assets.extra/{WARMUP_FILE}")
    assert sorted(name for name, _ in records) == sorted(module.signatures())
    assert {"stream_start", "stream_next"} <= set(session_path_signatures(path))
    state = dict(records)["stream_next"]["state"]
    assert len(state) == 2 and len(state[0]) == module.stream_width


def _refusal(model, inputs):
    from serving.rest_api import graph_error

    with pytest.raises(tf.errors.InvalidArgumentError) as err:
        model.run("stream_next", inputs)
    return graph_error(err.value).args[0]


def test_bad_state_step_token_and_method_are_refused_with_clear_messages(exports):
    _, model, module = exports["word"]
    knobs = {name: [KNOBS[name][0]] for name in STREAM_KNOBS if name != "seed"} | {"seed": [1]}
    start = model.run("stream_start", {"prompt": ["the cat"], "method": [1], **knobs})
    good = {"state": start["state"], "token": start["token"], "step": [1], "method": [1], **knobs}
    assert not start["done"][0] and model.run("stream_next", good)["token"].shape == (1,)
    width = module.stream_width
    short = start["state"][:, :-1]
    assert _refusal(model, {**good, "state": short}) == (
        f"state must have {width} columns (the stream state of this export, as stream_start and "
        f"stream_next return it), got {width - 1}")
    assert _refusal(model, {**good, "step": [MAX_NEW]}) == f"step must be in [0, {MAX_NEW - 1}], got 12 for prompt 0"
    assert _refusal(model, {**good, "step": [-1]}) == f"step must be in [0, {MAX_NEW - 1}], got -1 for prompt 0"
    assert _refusal(model, {**good, "step": [2]}) == (
        "step must be the index of the token to produce (the tokens streamed so far), 1 for prompt 0, got 2")
    other = (int(start["token"][0]) + 1 - 4) % (len(WORDS)) + 4
    assert _refusal(model, {**good, "token": [other]}) == (
        f"token must be the token the previous stream call returned, {start['token'][0]} for prompt 0, got {other}")
    assert _refusal(model, {**good, "token": [500]}) == f"token must be in [0, {len(WORDS) + 3}], got 500 for prompt 0"
    assert _refusal(model, {**good, "method": [4]}) == (
        "method must be in [0, 3] (0 greedy, 1 sample, 2 top_k, 3 top_p), got 4 for prompt 0")
    assert _refusal(model, {**good, "temperature": [0.0]}).startswith("temperature must be in [1e-06")
    forged = start["state"].copy()
    forged[0, width - 1] = 0.5  # a history id that is not an integer
    assert _refusal(model, {**good, "state": forged}) == (
        f"state of prompt 0 has 0.5 in column {width - 1}, a value no stream state of this export holds: "
        "send back the state the previous stream call returned")
    assert _refusal(model, {**good, "step": [1, 1]}).startswith("step must have one value per prompt")


def test_a_row_done_at_start_streams_nothing(exports):
    _, model, _ = exports["char"]
    knobs = {**{k: [v[0]] * 2 for k, v in KNOBS.items()}, "max_new_tokens": [0, 3], "seed": [0, 0]}
    texts, tokens, _, _, calls = stream(model, "prompt", ["ab", "cd"], 0, **knobs)
    ref = one_shot(model, "greedy", "prompt", ["ab", "cd"], **knobs)
    assert texts == ref["text"].tolist() and texts[0] == b"" and tokens[0] == [0] * calls
