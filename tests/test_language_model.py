"""The language model's two calls agree, and its pieces fit together."""

import numpy as np
import pytest
import tensorflow as tf

from trainer.language_model import LanguageModel, build_language_model


@pytest.mark.parametrize("cell, tie, emb, hid", [("lstm", False, 4, 4), ("rnn", False, 6, 4),
                                                  ("lstm", True, 4, 4), ("lstm", True, 3, 5)])
def test_step_by_step_equals_full_sequence(cell, tie, emb, hid):
    model = build_language_model({"vocab_size": 17, "embedding_dim": emb, "hidden_dim": hid,
                                  "num_layers": 2, "cell": cell, "tie_embeddings": tie, "init_scale": 0.5})
    ids = tf.constant(np.random.default_rng(0).integers(0, 17, (3, 6)), tf.int32)
    full, final = model(ids)
    states = model.initial_state(3)
    for t in range(6):
        logits, states = model.step(ids[:, t], states)
        np.testing.assert_allclose(logits, full[:, t], atol=1e-5)
    for a, b in zip(states, final, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert len(final) == 2 * (2 if cell == "lstm" else 1)


def test_tied_embeddings_share_the_matrix():
    tied = build_language_model({"vocab_size": 20, "embedding_dim": 3, "hidden_dim": 5,
                                 "num_layers": 1, "tie_embeddings": True})
    untied = build_language_model({"vocab_size": 20, "embedding_dim": 3, "hidden_dim": 5, "num_layers": 1})
    names = [w.path for w in tied.weights]
    assert not any("output/kernel" in n for n in names) and any("projection" in n for n in names)
    # tied: E*V + projection 5*3 + bias V + LSTM; untied: E*V + LSTM + (5*V + V)
    lstm = 4 * (3 * 5 + 5 * 5 + 5)
    assert tied.count_params() == 20 * 3 + 15 + 20 + lstm
    assert untied.count_params() == 20 * 3 + lstm + 5 * 20 + 20


def test_states_carry_between_calls():
    model = build_language_model({"vocab_size": 9, "embedding_dim": 4, "hidden_dim": 4, "num_layers": 1})
    ids = tf.constant([[1, 2, 3, 4, 5, 6]])
    whole, _ = model(ids)
    first, states = model(ids[:, :3])
    second, _ = model(ids[:, 3:], states)
    np.testing.assert_allclose(tf.concat([first, second], 1), whole, atol=1e-6)


def test_unknown_cell_is_rejected():
    with pytest.raises(ValueError, match="cell must be one of"):
        LanguageModel(vocab_size=5, embedding_dim=2, hidden_dim=2, cell="gru")


def test_mixed_bfloat16_keeps_float32_state_and_loss_and_trains(tmp_path):
    from pipeline.core.config import TrainConfig
    from trainer.training import Trainer

    model = build_language_model({"vocab_size": 17, "embedding_dim": 8, "hidden_dim": 8, "num_layers": 2,
                                  "precision": "mixed_bfloat16", "init_scale": 0.5})
    assert model.recurrent[0].kernel.dtype == "float32" and model.recurrent[0].compute_dtype == "bfloat16"
    ids = tf.constant(np.random.default_rng(1).integers(4, 17, (2, 5)), tf.int32)
    full, final = model(ids)
    assert full.dtype == tf.float32 and all(s.dtype == tf.float32 for s in final)
    states = model.initial_state(2)
    for t in range(5):
        logits, states = model.step(ids[:, t], states)
    np.testing.assert_allclose(logits, full[:, -1], atol=2e-2)  # bfloat16 matmuls
    stream = np.tile(np.arange(4, 17), 40).astype(np.int32)
    history = Trainer(model, TrainConfig(batch_size=4, bptt=6, epochs=2, optimizer="adam", learning_rate=0.02),
                      str(tmp_path), verbose=False).fit(stream, stream[:100])
    assert history[-1]["valid_ppl"] < history[0]["valid_ppl"]


@pytest.mark.parametrize("chunk_tokens", [1, 4, 9, 2048])
def test_prime_and_token_nll_read_in_windows_exactly(chunk_tokens):
    """prime computes only the last position's logits (one loop of every layer's step)
    and token_nll never [B, T, V] (window by window, the state carried): both equal the
    whole-sequence call."""
    lm = build_language_model(dict(vocab_size=30, embedding_dim=6, hidden_dim=5, num_layers=2, tie_embeddings=True))
    ids = tf.constant(np.random.default_rng(0).integers(3, 30, size=(3, 11)), tf.int32)
    lengths = tf.constant([11, 1, 6])
    mask = tf.sequence_mask(lengths, 11)
    logits, states = lm(ids, mask=mask)
    last, primed = lm.prime(ids, lengths)
    np.testing.assert_array_equal(last, tf.gather(logits, lengths - 1, batch_dims=1))
    for a, b in zip(primed, states, strict=True):
        np.testing.assert_array_equal(a, b)
    targets = tf.roll(ids, -1, axis=1)
    expected = tf.where(mask, tf.nn.sparse_softmax_cross_entropy_with_logits(targets, logits), 0.0)
    np.testing.assert_allclose(lm.token_nll(ids, targets, lengths, chunk_tokens=chunk_tokens), expected,
                               rtol=1e-6, atol=1e-6)
    assert lm.token_nll(tf.zeros([2, 0], tf.int32), tf.zeros([2, 0], tf.int32), tf.constant([0, 0])).shape == (2, 0)
