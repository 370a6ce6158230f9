"""train.distribute: strategies from TF_CONFIG, replicas that train as one process with
the same global batch, and mixed_float16 with loss scaling."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from pipeline.core.errors import ConfigError
from trainer.distribute import cluster_from_tf_config, make_strategy


@pytest.mark.parametrize("value, message", [
    (None, "needs the TF_CONFIG environment variable"),
    ("{not json", "TF_CONFIG is not valid JSON"),
    (json.dumps({"cluster": {"worker": ["a:1"]}}), "needs a 'cluster' and a 'task'"),
    (json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}), "is not in its cluster"),
])
def test_bad_tf_config_is_a_clear_config_error(monkeypatch, value, message):
    if value is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", value)
    with pytest.raises(ConfigError, match=message):
        make_strategy("multi_worker")


def test_tf_config_of_a_worker_is_read(monkeypatch):
    config = {"cluster": {"worker": ["h0:1", "h1:1"]}, "task": {"type": "worker", "index": 1}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(config))
    assert cluster_from_tf_config() == config


_TWO_REPLICAS = textwrap.dedent("""
    import json, tempfile
    import numpy as np, tensorflow as tf, keras
    (cpu,) = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from pipeline.core.config import TrainConfig
    from trainer.language_model import LanguageModel
    from trainer.training import Trainer

    rng = np.random.default_rng(0)
    windows = [(tf.constant(rng.integers(0, 30, (8, 10)), tf.int32),
                tf.constant(rng.integers(0, 30, (8, 10)), tf.int32)) for _ in range(3)]
    out = {}
    for name, strategy, batch in [("one", tf.distribute.get_strategy(), 8),
                                  ("two", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), 4)]:
        keras.utils.set_random_seed(0)
        with strategy.scope():
            model = LanguageModel(30, 16, 16, 2, dropout=0.0)
            model.build()
        config = TrainConfig(batch_size=batch, bptt=10, optimizer="adam", learning_rate=0.01, clip_norm=0.5)
        with tempfile.TemporaryDirectory() as tmp:
            trainer = Trainer(model, config, tmp, verbose=False, strategy=strategy)
            states, nlls = model.initial_state(8), []
            for k, (x, y) in enumerate(windows):
                nll, count, states = trainer._train_step(x, y, states, tf.constant([0, k]))
                nlls.append(float(nll))
        out[name] = {"replicas": trainer.replicas, "nll": nlls, "count": int(count),
                     "weights": [v.numpy().tolist() for v in model.trainable_variables],
                     "states": [s.numpy().tolist() for s in states]}
    print(json.dumps(out))
""")


@pytest.mark.slow
def test_two_mirrored_replicas_train_as_one_process_with_the_same_global_batch():
    """Replica r trains rows [4r, 4r+4) of the 8 streams; summed gradients are clipped by
    their global norm, so weights, losses and carried states equal one process's."""
    done = subprocess.run([sys.executable, "-c", _TWO_REPLICAS], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    one, two = out["one"], out["two"]
    assert (one["replicas"], two["replicas"]) == (1, 2)
    assert two["count"] == one["count"] == 80
    np.testing.assert_allclose(two["nll"], one["nll"], rtol=1e-6)
    for a, b in zip(one["weights"] + one["states"], two["weights"] + two["states"], strict=True):
        np.testing.assert_allclose(np.array(b), np.array(a), atol=2e-6)


_TWO_REPLICAS_SEQ2SEQ = textwrap.dedent("""
    import json, tempfile
    import numpy as np, tensorflow as tf, keras
    (cpu,) = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from pipeline.core.config import TrainConfig
    from trainer.seq2seq_model import build_seq2seq_model
    from trainer.seq2seq_training import Seq2SeqTrainer

    rng = np.random.default_rng(0)
    batch = []
    for length in (5, 6, 6):
        source = rng.integers(4, 12, (8, length)).astype(np.int32)
        source[:3, -2:] = 0  # padding in some rows: the loss is over real target tokens only
        target = rng.integers(4, 12, (8, length + 1)).astype(np.int32)
        target[5:, -3:] = 0
        batch.append((source, np.concatenate([np.full((8, 1), 2, np.int32), target[:, :-1]], 1), target))
    out = {}
    for name, strategy, size in [("one", tf.distribute.get_strategy(), 8),
                                 ("two", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), 4)]:
        keras.utils.set_random_seed(0)
        with strategy.scope():
            model = build_seq2seq_model({"source_vocab_size": 12, "target_vocab_size": 12,
                                         "embedding_dim": 8, "hidden_dim": 8})
        config = TrainConfig(batch_size=size, optimizer="adam", learning_rate=0.01)
        with tempfile.TemporaryDirectory() as tmp:
            trainer = Seq2SeqTrainer(model, config, tmp, verbose=False, strategy=strategy)
            nlls = [float(trainer._run_batch([tf.constant(t) for t in b], tf.constant([0, k]))[0])
                    for k, b in enumerate(batch)]
        out[name] = {"nll": nlls, "weights": [v.numpy().tolist() for v in model.trainable_variables]}
    print(json.dumps(out))
""")


@pytest.mark.slow
def test_two_mirrored_replicas_train_seq2seq_as_one_process():
    """Pair batches split by rows; the loss is normalised by the real target tokens of
    the whole global batch, so two replicas update exactly as one process does."""
    done = subprocess.run([sys.executable, "-c", _TWO_REPLICAS_SEQ2SEQ], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(out["two"]["nll"], out["one"]["nll"], rtol=1e-6)
    for a, b in zip(out["one"]["weights"], out["two"]["weights"], strict=True):
        np.testing.assert_allclose(np.array(b), np.array(a), atol=2e-6)


def test_mixed_float16_trains_with_loss_scaling(tmp_path):
    import keras

    from pipeline.core.config import TrainConfig
    from trainer.language_model import LanguageModel
    from trainer.training import Trainer

    stream = np.array([(i * 7) % 13 + 4 for i in range(2000)], np.int32)
    ppl = {}
    for precision in ("float32", "mixed_float16"):
        keras.utils.set_random_seed(0)
        model = LanguageModel(20, 16, 16, 1, precision=precision)
        model.build()
        config = TrainConfig(batch_size=4, bptt=10, epochs=2, optimizer="adam", learning_rate=0.02,
                             precision=precision)
        trainer = Trainer(model, config, str(tmp_path / precision), verbose=False)
        ppl[precision] = trainer.fit(stream, stream[:300])[-1]["valid_ppl"]
        if precision == "mixed_float16":
            assert isinstance(trainer.optimizer, keras.optimizers.LossScaleOptimizer)
            assert model.recurrent[0].compute_dtype == "float16"
    assert ppl["float32"] < 3.0  # the sequence is learnable
    assert ppl["mixed_float16"] == pytest.approx(ppl["float32"], rel=0.02)
