"""The sequence-to-sequence model: its two calls agree, padding is invisible, the serving
decoders drive it unchanged, and a tiny one learns to reverse sequences exactly."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline.core.constants import BOS_ID, EOS_ID
from serving.decoders.beam_search import beam_search
from serving.decoders.generate import generate
from serving.decoders.strategies import get_strategy
from serving.knobs import Knobs
from trainer.layers.attention import BahdanauAttention, LuongAttention, get_attention, masked_softmax
from trainer.seq2seq_model import Seq2SeqModel, build_seq2seq_model

SRC_V, TGT_V = 11, 13
# (attention, score, input_feeding, bidirectional, encoder_layers, decoder layers)
VARIANTS = [
    ("luong", "general", False, False, 1, 1),
    ("luong", "general", True, False, 2, 2),
    ("luong", "general", True, True, 1, 2),
    ("luong", "dot", True, False, 2, 1),
    ("luong", "dot", False, False, 1, 1),
    ("bahdanau", "general", False, True, 2, 2),
    ("bahdanau", "general", True, False, 1, 1),
    ("bahdanau", "general", True, True, 1, 2),
]
IDS = ["-".join(map(str, v)) for v in VARIANTS]


def _model(attention="luong", score="general", feeding=True, bidirectional=False, enc=1, dec=1, **extra):
    return build_seq2seq_model({
        "source_vocab_size": SRC_V, "target_vocab_size": TGT_V, "embedding_dim": 4, "hidden_dim": 4,
        "num_layers": dec, "encoder_layers": enc, "attention": attention, "attention_score": score,
        "input_feeding": feeding, "bidirectional_encoder": bidirectional, "init_scale": 0.5, **extra})


def _batch(seed=0):
    """Right-padded sources (lengths 5, 2, 4, 1) and <bos>-started targets."""
    rng = np.random.default_rng(seed)
    lengths = np.array([5, 2, 4, 1], np.int32)
    src = rng.integers(4, SRC_V, (4, 5)).astype(np.int32)
    src[np.arange(5)[None, :] >= lengths[:, None]] = 0
    tgt = rng.integers(4, TGT_V, (4, 6)).astype(np.int32)
    tgt[:, 0] = BOS_ID
    return tf.constant(src), tf.constant(lengths), tf.constant(tgt)


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_shapes_and_state_layout(variant):
    model = _model(*variant)
    src, lengths, tgt = _batch()
    logits, weights = model(src, tgt, source_lengths=lengths, return_attention=True)
    assert logits.shape == (4, 6, TGT_V) and logits.dtype == tf.float32
    assert weights.shape == (4, 6, 5) and weights.dtype == tf.float32
    states = model.encode(src, lengths)
    memory_dim = 8 if variant[3] else 4
    key_dim = memory_dim if variant[:2] == ("luong", "dot") else 4
    expected = [(4, 4)] * (2 * variant[5]) + [(4, 4), (4, 5, memory_dim), (4, 5, key_dim), (4, 5)]
    assert [tuple(s.shape) for s in states] == expected
    assert all(s.dtype == tf.float32 for s in states)
    logits, new_states, step_weights = model.step_with_attention(tf.fill([4], BOS_ID), states)
    assert logits.shape == (4, TGT_V) and step_weights.shape == (4, 5)
    assert [tuple(s.shape) for s in new_states] == expected
    for old, new in zip(states[-3:], new_states[-3:], strict=True):  # memory, keys and mask pass through
        assert new is old


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_step_by_step_equals_full_call(variant):
    model = _model(*variant)
    src, lengths, tgt = _batch(1)
    full, full_weights = model(src, tgt, source_lengths=lengths, return_attention=True)
    states = model.encode(src, lengths)
    for t in range(tgt.shape[1]):
        logits, states, weights = model.step_with_attention(tgt[:, t], states)
        np.testing.assert_allclose(logits, full[:, t], atol=1e-5)
        np.testing.assert_allclose(weights, full_weights[:, t], atol=1e-6)
    first, _ = model.prime(src, lengths)  # prime = encode + <bos>
    np.testing.assert_allclose(first, full[:, 0], atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_padded_source_positions_are_invisible(variant):
    model = _model(*variant)
    src, lengths, tgt = _batch(2)
    logits, weights = model(src, tgt, source_lengths=lengths, return_attention=True)
    padded = np.arange(5)[None, :] >= lengths.numpy()[:, None]
    noise = np.random.default_rng(3).integers(1, SRC_V, src.shape).astype(np.int32)
    other = tf.constant(np.where(padded, noise, src.numpy()))
    other_logits, other_weights = model(other, tgt, source_lengths=lengths, return_attention=True)
    np.testing.assert_array_equal(logits, other_logits)
    np.testing.assert_array_equal(weights, other_weights)
    np.testing.assert_array_equal(tf.boolean_mask(tf.transpose(weights, [0, 2, 1]), padded), 0.0)
    np.testing.assert_allclose(tf.reduce_sum(weights, -1), 1.0, atol=1e-6)
    # Without lengths, the count of non-<pad> ids is the length.
    np.testing.assert_array_equal(model(src, tgt), logits)
    # One source alone gives what it gives in a padded batch.
    alone = model(src[1:2, :2], tgt[1:2])
    np.testing.assert_allclose(alone, logits[1:2], atol=1e-6)


def test_attention_layers_mask_and_normalise():
    mask = tf.constant([[1.0, 1.0, 0.0]])
    weights = masked_softmax(tf.constant([[[1.0, 2.0, 50.0]]]), mask)
    assert weights.numpy()[0, 0, 2] == 0.0
    np.testing.assert_allclose(weights[0, 0, :2], tf.nn.softmax([1.0, 2.0]), atol=1e-7)
    dot = LuongAttention(2, score="dot")
    dot.build((None, None, 2), (None, None, 2))
    memory = tf.constant([[[1.0, 0.0], [0.0, 1.0], [9.0, 9.0]]])
    context, weights = dot(tf.constant([[[3.0, 0.0]]]), memory, source_mask=mask)
    expected = tf.nn.softmax([3.0, 0.0]).numpy()
    np.testing.assert_allclose(weights[0, 0], [*expected, 0.0], atol=1e-6)
    np.testing.assert_allclose(context[0, 0], expected, atol=1e-6)
    additive = BahdanauAttention(3)
    additive.build((None, None, 2), (None, None, 2))
    assert [tuple(w.shape) for w in additive.weights] == [(2, 3), (2, 3), (3,), (3,)]
    with pytest.raises(ValueError, match="unknown attention 'cosine'; choose one of: luong, bahdanau"):
        get_attention("cosine", 4)
    with pytest.raises(ValueError, match="score must be 'general' or 'dot', got 'concat'"):
        LuongAttention(4, score="concat")


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="'dot' attention needs encoder outputs of the decoder's size 4, got 8"):
        _model(score="dot", bidirectional=True)
    with pytest.raises(ValueError, match="cell must be 'lstm', got 'rnn'"):
        Seq2SeqModel(5, 5, 2, 2, cell="rnn")
    with pytest.raises(ValueError, match="builds kind 'seq2seq', got 'lm'"):
        build_seq2seq_model({"kind": "lm", "vocab_size": 5, "embedding_dim": 2, "hidden_dim": 2})
    with pytest.raises(ValueError, match="needs target_in"):
        _model()(tf.ones([1, 2], tf.int32))


@pytest.mark.parametrize("feeding", [False, True])
def test_dropout_is_a_pure_function_of_the_seed_and_gradients_reach_every_weight(feeding):
    model = _model(feeding=feeding, bidirectional=True, enc=2, dec=2, dropout=0.3, recurrent_dropout=0.3)
    src, lengths, tgt = _batch(4)
    seed = tf.constant([7, 11])
    a = model(src, tgt, source_lengths=lengths, training=True, seed=seed)
    b = model(src, tgt, source_lengths=lengths, training=True, seed=seed)
    c = model(src, tgt, source_lengths=lengths, training=True, seed=seed + 1)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3
    assert np.abs(a - model(src, tgt, source_lengths=lengths)).max() > 1e-3
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(model(src, tgt, source_lengths=lengths, training=True, seed=seed) ** 2)
    grads = tape.gradient(loss, model.trainable_variables)
    missing = [v.path for v, g in zip(model.trainable_variables, grads) if g is None]
    assert not missing
    assert all(float(tf.reduce_max(tf.abs(g))) > 0 for g in grads)


def test_tied_embeddings_share_the_target_matrix():
    tied = _model(tie_embeddings=True, embedding_dim=3)
    names = {w.path.split("/", 1)[1] for w in tied.weights}
    assert "output/kernel" not in names and {"projection/kernel", "output_bias"} <= names
    src, lengths, tgt = _batch()
    full = tied(src, tgt, source_lengths=lengths)
    states = tied.encode(src, lengths)
    for t in range(tgt.shape[1]):
        logits, states = tied.step(tgt[:, t], states)
        np.testing.assert_allclose(logits, full[:, t], atol=1e-5)


@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_keeps_float32_states_attention_and_logits(precision):
    model = _model("bahdanau", feeding=True, bidirectional=True, precision=precision)
    half = precision.split("_")[1]
    assert model.decoder[0].compute_dtype == half and model.attention.compute_dtype == half
    src, lengths, tgt = _batch()
    full, weights = model(src, tgt, source_lengths=lengths, return_attention=True)
    assert full.dtype == weights.dtype == tf.float32
    states = model.encode(src, lengths)
    assert all(s.dtype == tf.float32 for s in states)
    for t in range(tgt.shape[1]):
        logits, states = model.step(tgt[:, t], states)
        np.testing.assert_allclose(logits, full[:, t], atol=2e-2)


def test_model_config_keys(tmp_path):
    from pipeline.core.config_loader import load_config
    from pipeline.core.errors import ConfigError

    default = load_config(None, []).model
    assert (default.kind, default.attention, default.attention_score, default.encoder_layers,
            default.bidirectional_encoder, default.input_feeding) == ("lm", "luong", "general", 0, False, True)
    pairs = ["data.format=pairs", "data.source_train=s.txt", "data.target_train=t.txt"]
    cfg = load_config(None, [*pairs, "model.kind=seq2seq", "model.attention=bahdanau", "model.encoder_layers=3",
                             "model.bidirectional_encoder=true", "model.input_feeding=false"]).model
    assert (cfg.kind, cfg.attention, cfg.encoder_layers, cfg.bidirectional_encoder, cfg.input_feeding) == (
        "seq2seq", "bahdanau", 3, True, False)
    with pytest.raises(ConfigError, match="model.attention = 'cosine': Input should be 'luong' or 'bahdanau'"):
        load_config(None, ["model.attention=cosine"])
    with pytest.raises(ConfigError, match="seq2seq has LSTM layers only; got model.cell 'rnn'"):
        load_config(None, [*pairs, "model.kind=seq2seq", "model.cell=rnn"])
    with pytest.raises(ConfigError, match="bidirectional encoder doubles them; use attention_score: general"):
        load_config(None, [*pairs, "model.kind=seq2seq", "model.attention_score=dot",
                           "model.bidirectional_encoder=true"])
    load_config(None, ["model.cell=rnn", "model.attention_score=dot", "model.bidirectional_encoder=true"])  # lm


def test_config_round_trip_and_saved_weights_give_identical_outputs(tmp_path):
    model = _model("bahdanau", feeding=True, bidirectional=True, enc=2, dec=2, dropout=0.1)
    config = model.get_config()
    assert config["encoder_layers"] == 2 and config["attention"] == "bahdanau"
    path = str(tmp_path / "model.weights.h5")
    model.save_weights(path)
    again = build_seq2seq_model(config)
    again.load_weights(path)
    assert again.get_config() == config
    src, lengths, tgt = _batch(5)
    np.testing.assert_array_equal(model(src, tgt, source_lengths=lengths), again(src, tgt, source_lengths=lengths))
    shared = build_seq2seq_model({"kind": "seq2seq", "vocab_size": 9, "embedding_dim": 2, "hidden_dim": 2})
    assert shared.source_vocab_size == shared.target_vocab_size == 9 and shared.encoder_layers == 1


def _no_autograph(fn):
    return tf.autograph.experimental.do_not_convert(fn)


def test_serving_decoders_drive_the_model_unchanged():
    """serving.decoders.generate and serving.decoders.beam_search reach the model through prime and step;
    rank-3 state entries pass their loops, eagerly and in a graph with unknown shapes."""
    model = _model("luong", feeding=True, bidirectional=True, enc=2, dec=2)
    src, lengths, _ = _batch(6)
    specs = [tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None], tf.int32)]
    greedy = get_strategy("greedy")

    @tf.function(input_signature=specs)
    @_no_autograph
    def greedy_graph(ids, lens):
        return generate(model, ids, lens, Knobs.defaults(tf.shape(ids)[0], max_new_tokens=5), greedy)

    @tf.function(input_signature=specs)
    @_no_autograph
    def beam_graph(ids, lens):
        return beam_search(model, ids, lens, Knobs.defaults(tf.shape(ids)[0], max_new_tokens=5, beam_width=3))

    eager = generate(model, src, lengths, Knobs.defaults(4, max_new_tokens=5), greedy)
    graph = greedy_graph(src, lengths)
    np.testing.assert_array_equal(eager.token_ids, graph.token_ids)
    # The same tokens as a plain greedy loop over model.step (the decoders ban <pad>, <unk>, <bos>).
    states = model.encode(src, lengths)
    token, expected = tf.fill([4], BOS_ID), []
    for _ in range(5):
        logits, states = model.step(token, states)
        logits = tf.tensor_scatter_nd_update(
            logits, [[r, c] for r in range(4) for c in (0, 1, BOS_ID)], tf.fill([12], -1e9))
        token = tf.argmax(logits, -1, output_type=tf.int32)
        expected.append(token.numpy())
    expected = np.stack(expected, 1)
    for row, length in enumerate(eager.lengths.numpy()):  # rows end at their <eos>
        np.testing.assert_array_equal(eager.token_ids[row, :length], expected[row, :length])
    beams = beam_graph(src, lengths)
    assert beams.token_ids.shape == (4, 3, 5)
    assert np.all(np.diff(beams.score.numpy(), axis=1) <= 0)
    one = beam_search(model, src, lengths, Knobs.defaults(4, max_new_tokens=5, beam_width=1))
    np.testing.assert_array_equal(one.token_ids[:, 0], eager.token_ids)


def _reverse_pairs(rng, n, max_len=6, vocab=14):
    """Random sequences over ids 4..vocab-1 of length 3..max_len and their reverses."""
    lengths = rng.integers(3, max_len + 1, n).astype(np.int32)
    src = np.zeros((n, max_len), np.int32)
    tgt_in = np.zeros((n, max_len + 1), np.int32)
    tgt_out = np.zeros((n, max_len + 1), np.int32)
    for i, length in enumerate(lengths):
        seq = rng.integers(4, vocab, length)
        src[i, :length] = seq
        tgt_in[i, 0], tgt_in[i, 1:length + 1] = BOS_ID, seq[::-1]
        tgt_out[i, :length], tgt_out[i, length] = seq[::-1], EOS_ID
    return src, lengths, tgt_in, tgt_out


@pytest.mark.parametrize("attention, feeding, bidirectional, dropout", [
    ("luong", True, True, 0.1), ("bahdanau", False, False, 0.0)])
def test_learns_to_reverse_sequences_exactly(attention, feeding, bidirectional, dropout):
    keras.utils.set_random_seed(0)
    model = build_seq2seq_model({"vocab_size": 14, "embedding_dim": 16, "hidden_dim": 32, "attention": attention,
                                 "input_feeding": feeding, "bidirectional_encoder": bidirectional,
                                 "dropout": dropout})
    steps = 500
    optimizer = keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(0.01, steps, alpha=0.05))

    @tf.function
    def train_step(src, lengths, tgt_in, tgt_out, seed):
        with tf.GradientTape() as tape:
            logits = model(src, tgt_in, source_lengths=lengths, training=True, seed=seed)
            weight = tf.cast(tgt_out > 0, tf.float32)
            loss = tf.nn.sparse_softmax_cross_entropy_with_logits(tgt_out, logits)
            loss = tf.reduce_sum(loss * weight) / tf.reduce_sum(weight)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    rng = np.random.default_rng(0)
    for step in range(steps):
        loss = train_step(*_reverse_pairs(rng, 64), tf.constant([step, 0]))
    assert float(loss) < 0.1
    src, lengths, _, tgt_out = _reverse_pairs(np.random.default_rng(123), 50)
    out = generate(model, src, lengths, Knobs.defaults(50, max_new_tokens=8), get_strategy("greedy"))
    np.testing.assert_array_equal(out.lengths, lengths + 1)
    np.testing.assert_array_equal(out.token_ids.numpy()[:, :7], tgt_out)
