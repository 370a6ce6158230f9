"""The seq2seq trainer: the language model's loop on teacher-forced pair batches,
with padding masked and an exact resume from a mid-epoch checkpoint."""

import numpy as np
import pytest

from pipeline.core.config import TrainConfig
from trainer.pairs_data import PairSplit
from trainer.seq2seq_model import build_seq2seq_model
from trainer.seq2seq_training import Seq2SeqTrainer, evaluate_pairs

from conftest import die_at_call


def _pairs(n, seed):
    """Reversal pairs over ids 4..11, lengths 2..5; targets end with <eos> (3)."""
    rng = np.random.default_rng(seed)
    sources = [rng.integers(4, 12, rng.integers(2, 6)).astype(np.int32) for _ in range(n)]
    targets = [np.concatenate([s[::-1], [3]]).astype(np.int32) for s in sources]

    def flat(rows):
        return np.concatenate(rows), np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)

    return PairSplit(np.arange(n), *flat(sources), *flat(targets))


def _model(seed=0):
    import keras

    keras.utils.set_random_seed(seed)
    return build_seq2seq_model({"source_vocab_size": 12, "target_vocab_size": 12, "embedding_dim": 16,
                                "hidden_dim": 16, "dropout": 0.1})


def test_loss_counts_real_target_tokens_only(tmp_path):
    pairs = _pairs(40, 1)
    result = evaluate_pairs(_model(), pairs)
    assert result.tokens == int(np.diff(pairs.target_splits).sum())  # no <pad> counted
    assert 5 < result.perplexity < 30  # about uniform over 12 ids before training


def test_training_learns_and_resumes_mid_epoch_exactly(tmp_path):
    train, valid = _pairs(400, 2), _pairs(40, 3)
    cfg = TrainConfig(batch_size=16, epochs=2, optimizer="adam", learning_rate=0.01, checkpoint_every=10)
    full = Seq2SeqTrainer(_model(), cfg, str(tmp_path / "full"), verbose=False).fit(train, valid)
    assert full[-1]["valid_ppl"] < full[0]["train_ppl"]

    interrupted = Seq2SeqTrainer(_model(), cfg, str(tmp_path / "cut"), verbose=False)
    die_at_call(interrupted, 35)  # about 26 batches an epoch: in epoch 2
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit(train, valid)
    resumed = Seq2SeqTrainer(_model(seed=7), cfg, str(tmp_path / "cut"), verbose=False)
    assert resumed.restore() and int(resumed._global_step.numpy()) == 30
    history = resumed.fit(train, valid)
    for a, b in zip(full, history, strict=True):
        for key in ("train_ppl", "valid_ppl", "tokens_seen"):
            assert a[key] == pytest.approx(b[key], rel=1e-5), key
