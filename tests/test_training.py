"""The training loop: it learns, follows the LR schedule, and resumes exactly."""

import keras
import pytest

from pipeline.core.config import TrainConfig
from trainer.evaluation import evaluate
from trainer.language_model import build_language_model
from trainer.training import Trainer, learning_rate_for

from conftest import counting_streams, die_at_call

MODEL = {"vocab_size": 12, "embedding_dim": 8, "hidden_dim": 8, "num_layers": 1, "dropout": 0.2}


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    return build_language_model(MODEL)


def test_zaremba_learning_rate_schedule():
    cfg = TrainConfig(learning_rate=1.0, lr_decay=0.5, lr_decay_start_epoch=5)
    assert [learning_rate_for(cfg, e) for e in range(7)] == [1, 1, 1, 1, 0.5, 0.25, 0.125]


def test_plateau_learning_rate_schedule():
    cfg = TrainConfig(learning_rate=1.0, lr_decay=0.25, lr_decay_start_epoch=4, lr_schedule="plateau")
    improved = [True, False, True, False, False, True]
    history = [{"epoch": n + 1, "improved": i} for n, i in enumerate(improved)]
    # epoch 2's stall is before the decay starts (epoch 4 has the first rate that may decay)
    assert [learning_rate_for(cfg, e, history) for e in range(7)] == [1, 1, 1, 1, 0.25, 0.0625, 0.0625]


def test_plateau_schedule_decays_after_a_stalled_epoch(tmp_path):
    train, valid = counting_streams()
    cfg = TrainConfig(batch_size=4, bptt=8, epochs=3, optimizer="sgd", learning_rate=1e-6,
                      lr_schedule="plateau", lr_decay=0.25, lr_decay_start_epoch=1)
    history = Trainer(_model(), cfg, str(tmp_path), verbose=False).fit(train, valid)
    # at lr 1e-6 epoch 2 does not improve (as in test_early_stopping), so epoch 3 runs at lr / 4
    assert [h["improved"] for h in history[:2]] == [True, False]
    assert [h["learning_rate"] for h in history] == [1e-6, 1e-6, 2.5e-7]


def test_training_learns_the_pattern(tmp_path):
    train, valid = counting_streams()
    model = _model()
    before = evaluate(model, valid).perplexity
    cfg = TrainConfig(batch_size=4, bptt=8, epochs=3, optimizer="adam", learning_rate=0.02)
    history = Trainer(model, cfg, str(tmp_path), verbose=False).fit(train, valid)
    assert len(history) == 3
    assert history[-1]["valid_ppl"] < 2.0 < before
    assert history[0]["train_ppl"] > history[-1]["train_ppl"]
    assert history[-1]["tokens_seen"] == 3 * 4 * 299  # 4 rows of (1200 - 1) // 4 predictions


def test_resume_mid_epoch_matches_uninterrupted_run(tmp_path):
    train, valid = counting_streams()
    cfg = TrainConfig(batch_size=4, bptt=8, epochs=2, optimizer="sgd", learning_rate=1.0,
                      lr_decay_start_epoch=2, checkpoint_every=10)
    full = Trainer(_model(), cfg, str(tmp_path / "full"), verbose=False).fit(train, valid)

    interrupted = Trainer(_model(), cfg, str(tmp_path / "cut"), verbose=False)
    die_at_call(interrupted, 45)  # 5 steps after the checkpoint at global step 40 (38 an epoch: in epoch 2)
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit(train, valid)
    resumed = Trainer(_model(seed=123), cfg, str(tmp_path / "cut"), verbose=False)
    assert resumed.restore() and int(resumed._global_step.numpy()) == 40
    history = resumed.fit(train, valid)
    for a, b in zip(full, history):
        for key in ("train_ppl", "valid_ppl", "tokens_seen"):
            assert a[key] == pytest.approx(b[key], rel=1e-4), key


def test_early_stopping(tmp_path):
    train, valid = counting_streams()
    cfg = TrainConfig(batch_size=4, bptt=8, epochs=8, optimizer="sgd", learning_rate=1e-6,
                      early_stopping_patience=1)
    history = Trainer(_model(), cfg, str(tmp_path), verbose=False).fit(train, valid)
    # Epoch 1 sets the best; at lr 1e-6 epoch 2 gains less than MIN_IMPROVEMENT, and with a
    # patience of 1 that stops training: exactly 2 epochs.
    assert [h["improved"] for h in history] == [True, False]
