"""The training loop: truncated BPTT with the recurrent state passed in and out of a
compiled train step, checkpoints that resume exactly, LR decay, clipping, early stopping.

Everything a resumed run needs is in the checkpoint: weights, optimizer slots, epoch and
step within it, the carried recurrent state, the running sums of the epoch and the
history of finished epochs. Dropout masks are stateless functions of (seed, global step),
so a resumed run replays the same masks, batches and updates as an uninterrupted one.

The step is a plain function of (x, y, states, seed) that returns new states, so it runs
under `strategy.run` unchanged (Keras `fit` is not used: it cannot carry the recurrent
state across batches as an input and output of the step, nor resume mid-epoch exactly).

Example:
    >>> trainer = Trainer(model, config.train, run_dir="work/train/abc")
    >>> history = trainer.fit(train_stream, valid_stream)
    >>> history[-1]["valid_ppl"]
    121.3
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from pipeline.core.config import TrainConfig
from trainer.data import bptt_dataset, num_windows
from trainer.evaluation import evaluate, make_eval_step
from trainer.nt_asgd import WeightAverage, nt_asgd_switch

EpochCallback = Callable[[dict], None]
MIN_IMPROVEMENT = 1e-3  # a valid perplexity 0.1% below the best so far counts as better


def learning_rate_for(config: TrainConfig, epoch: int, history: list[dict] = ()) -> float:
    """The learning rate of epoch `epoch` (0-based), from the finished epochs' `history`.

    `lr_schedule: epoch` is Zaremba et al.'s: constant, then x lr_decay per epoch from
    `lr_decay_start_epoch` (1-based). `plateau` is the PyTorch word_language_model's: x
    lr_decay after every finished epoch whose valid perplexity did not improve on the best,
    counting epochs from `lr_decay_start_epoch - 1` on. Both are functions of the checkpointed
    history, so a resumed run continues with the same rates.

    >>> learning_rate_for(TrainConfig(learning_rate=1.0, lr_decay=0.5, lr_decay_start_epoch=5), 4)
    0.5
    >>> learning_rate_for(TrainConfig(lr_schedule="plateau", lr_decay=0.25, lr_decay_start_epoch=1), 3,
    ...                   [{"epoch": 1, "improved": True}, {"epoch": 2, "improved": False},
    ...                    {"epoch": 3, "improved": True}])
    0.25
    """
    if config.lr_schedule == "plateau":
        stalls = sum(1 for h in history[:epoch]
                     if not h["improved"] and h["epoch"] + 1 >= config.lr_decay_start_epoch)
        return config.learning_rate * config.lr_decay ** stalls
    return config.learning_rate * config.lr_decay ** max(0, epoch + 2 - config.lr_decay_start_epoch)


def make_optimizer(config: TrainConfig, precision: str = "float32") -> keras.optimizers.Optimizer:
    """SGD or Adam (nt_asgd: SGD, the Trainer keeps the average); wrapped in dynamic loss
    scaling under mixed_float16."""
    if config.optimizer == "adam":
        optimizer = keras.optimizers.Adam(config.learning_rate)
    else:
        optimizer = keras.optimizers.SGD(config.learning_rate)
    if precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def _cluster_task(strategy: tf.distribute.Strategy) -> tuple[dict, str, int] | None:
    """(cluster spec, task type, task index) of a multi-worker strategy, else None."""
    resolver = getattr(strategy, "cluster_resolver", None)
    cluster = resolver.cluster_spec().as_dict() if resolver is not None else {}
    return (cluster, resolver.task_type, resolver.task_id) if cluster else None


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True in every process but the non-chief workers of a multi-worker cluster."""
    task = _cluster_task(strategy)
    if task is None:
        return True
    cluster, task_type, task_id = task
    return task_type == "chief" or (task_type == "worker" and task_id == 0 and "chief" not in cluster)


def replica_rows(tensors, replicas: int) -> list[tf.Tensor]:
    """This replica's share of global-batch tensors [R*B, ...]: rows [r*B, (r+1)*B)."""
    rows = tf.shape(tensors[0])[0] // replicas
    first = tf.cast(tf.distribute.get_replica_context().replica_id_in_sync_group, tf.int32) * rows
    return [t[first:first + rows] for t in tensors]


class Trainer:
    """Trains `model` with `config`, checkpointing into `run_dir/checkpoints`."""

    def __init__(self, model, config: TrainConfig, run_dir: str, verbose: bool = True,
                 strategy: tf.distribute.Strategy | None = None) -> None:
        """`model` must have been built under `strategy.scope()` (the default strategy:
        one process) and the trainer must be made in the same scope's program."""
        self.model = model
        self.config = config
        self.verbose = verbose
        self.strategy = strategy or tf.distribute.get_strategy()
        self.replicas = self.strategy.num_replicas_in_sync
        self.global_batch = config.batch_size * self.replicas
        self.is_chief = is_chief(self.strategy)
        with self.strategy.scope():
            self.optimizer = make_optimizer(config, model.precision)
            self.optimizer.build(model.trainable_variables)
        # Bookkeeping lives outside the strategy: every worker keeps an identical copy.
        self._carried = [tf.Variable(z, trainable=False) for z in self._zero_states()]  # all replicas' rows
        self._epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        self._step = tf.Variable(0, dtype=tf.int64, trainable=False)  # batches done in this epoch
        self._global_step = tf.Variable(0, dtype=tf.int64, trainable=False)
        self._nll = tf.Variable(0.0, dtype=tf.float64, trainable=False)  # this epoch so far
        self._tokens = tf.Variable(0, dtype=tf.int64, trainable=False)
        self._tokens_seen = tf.Variable(0, dtype=tf.int64, trainable=False)  # all epochs
        self._history = tf.Variable("[]", dtype=tf.string, trainable=False)
        self._averages = None if config.optimizer != "nt_asgd" else WeightAverage(model.trainable_variables)
        averaging = {} if self._averages is None else {"weight_average": self._averages}
        self._checkpoint = tf.train.Checkpoint(
            model=model, optimizer=self.optimizer, carried=self._carried, epoch=self._epoch,
            step=self._step, global_step=self._global_step, nll=self._nll, tokens=self._tokens,
            tokens_seen=self._tokens_seen,
            history=self._history, **averaging)
        self.checkpoint_dir = os.path.join(run_dir, "checkpoints")
        # Only the chief's checkpoints are kept; the other workers write theirs (saving may
        # take part in collectives) to a private folder that is deleted right after.
        if self.is_chief:
            write_dir = self.checkpoint_dir
        else:
            _, task_type, task_id = _cluster_task(self.strategy)
            write_dir = os.path.join(run_dir, "workers", f"{task_type}-{task_id}")
        self._write_dir = write_dir
        self._manager = tf.train.CheckpointManager(self._checkpoint, write_dir, max_to_keep=2)
        self.run_dir = run_dir
        self._train_step = self._make_train_step()
        self._eval_step = self._make_eval_step()

    # ---- what a model kind supplies (this class: the language model, truncated BPTT) ----

    def _zero_states(self) -> list[tf.Tensor]:
        """The carried state at the start of an epoch (all replicas' rows)."""
        return self.model.initial_state(self.global_batch)

    def _make_eval_step(self):
        return make_eval_step(self.model)

    def _replica_loss(self, batch, states, seed, replicas):
        """One replica's share of the global batch -> (nll [..], weights [..] or None,
        normalizer, new states, penalty); the loss is sum(nll * weights) / normalizer +
        penalty (a scalar: this replica's share of the regularisers)."""
        x, y, *states = replica_rows([*batch, *states], replicas)
        cfg = self.config
        nll, penalty, new_states = self.model.regularized_nll(
            x, y, states, seed, cfg.activation_penalty, cfg.temporal_penalty)
        # Zaremba et al.: summed over the window, averaged over the (global) batch. AR and
        # TAR are per-token means, so they join that loss x the window's length.
        penalty = penalty * tf.cast(tf.shape(x)[1], tf.float32) / replicas
        return nll, None, tf.cast(tf.shape(x)[0] * replicas, nll.dtype), new_states, penalty

    def _epoch_batches(self, train_data, epoch: int, skip: int) -> tf.data.Dataset:
        return bptt_dataset(train_data, self.global_batch, self.config.bptt, skip=skip)

    def _steps_per_epoch(self, train_data) -> int | None:
        return num_windows(len(train_data), self.global_batch, self.config.bptt)

    def _run_batch(self, batch, seed):
        """Runs the compiled step on one batch: (nll sum, predicted tokens)."""
        nll, count, states = self._train_step(*batch, [v.value() for v in self._carried], seed)
        for var, s in zip(self._carried, states):
            var.assign(s)
        return nll, count

    @property
    def history(self) -> list[dict]:
        """The per-epoch records so far (kept in the checkpoint, so a resumed run has them)."""
        return json.loads(self._history.numpy().decode())

    def restore(self) -> bool:
        """Restores the latest (chief's) checkpoint, if any; True when one was found."""
        latest = tf.train.latest_checkpoint(self.checkpoint_dir)
        if latest is None:
            return False
        self._checkpoint.restore(latest).assert_existing_objects_matched()
        return True

    def _make_train_step(self):
        """The compiled step on global windows: x, y [R*B, T], states [R*B, H] each.

        Replica r (of R) trains rows [r*B, (r+1)*B): its own contiguous streams. The
        gradients are summed over replicas before clipping (the clip sees the global norm,
        as one process with batch R*B would), and the new states and NLL sums are gathered
        so that every worker holds the whole picture (and the chief can checkpoint it).
        """
        model, optimizer, clip, strategy = self.model, self.optimizer, self.config.clip_norm, self.strategy
        replicas = self.replicas
        loss_scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)

        def replica_step(batch, states, seed):
            ctx = tf.distribute.get_replica_context()
            seed = seed + tf.stack([0, 7919 * tf.cast(ctx.replica_id_in_sync_group, tf.int32)])
            with tf.GradientTape() as tape:
                nll, weights, normalizer, new_states, penalty = self._replica_loss(batch, states, seed, replicas)
                if weights is not None:
                    nll = nll * tf.cast(weights, nll.dtype)
                loss = tf.reduce_sum(nll) / tf.cast(normalizer, nll.dtype) + tf.cast(penalty, nll.dtype)
                if loss_scaled:
                    loss = optimizer.scale_loss(loss)
            # Dense gradients: Keras' Adam squares the rows of sparse (IndexedSlices)
            # embedding gradients one by one, which is not Adam when a token repeats.
            grads = [tf.convert_to_tensor(g) for g in tape.gradient(loss, model.trainable_variables)]
            if replicas > 1:
                grads = ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads)
            scale = optimizer.dynamic_scale if loss_scaled else 1.0
            grads, _ = tf.clip_by_global_norm(grads, clip * scale)
            # The optimizer sums the replicas' gradients again: hand it 1/R of the total.
            if replicas > 1:
                grads = [g / replicas for g in grads]
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            count = tf.size(nll) if weights is None else tf.reduce_sum(tf.cast(weights, tf.int32))
            sums = tf.stack([tf.reduce_sum(tf.cast(nll, tf.float64)), tf.cast(count, tf.float64)])
            if replicas > 1:
                sums = ctx.all_reduce(tf.distribute.ReduceOp.SUM, sums)
                new_states = [ctx.all_gather(s, axis=0) for s in new_states]
            return sums, new_states

        averages = self._averages

        @tf.function(reduce_retracing=True)
        def train_step(*args):
            *batch, states, seed = args
            sums, new_states = strategy.run(replica_step, args=(tuple(batch), states, seed))
            local = strategy.experimental_local_results
            sums = local(sums)[0]
            new_states = [local(s)[0] for s in new_states]
            if averages is not None:
                averages.update(model.trainable_variables)  # once averaging has started
            return sums[0], tf.cast(sums[1], tf.int64), new_states

        return train_step

    def save(self) -> str:
        """Writes a checkpoint numbered by the global step -> its path (a worker writes to a scratch
        folder it then deletes).
        """
        path = self._manager.save(checkpoint_number=int(self._global_step.numpy()))
        if not self.is_chief:
            tf.io.gfile.rmtree(self._write_dir)
        return path

    def fit(self, train_stream: np.ndarray, valid_stream: np.ndarray,
            on_epoch_end: EpochCallback | None = None) -> list[dict]:
        """Trains until `config.epochs` or early stopping; returns the epoch history.

        Resumes from the latest checkpoint in `run_dir` when there is one.
        """
        cfg = self.config
        self.restore()
        steps_per_epoch = self._steps_per_epoch(train_stream)
        while int(self._epoch.numpy()) < cfg.epochs and not self._should_stop():
            epoch = int(self._epoch.numpy())
            lr = learning_rate_for(cfg, epoch, self.history)
            self.optimizer.learning_rate.assign(lr)
            started = time.perf_counter()
            skip = int(self._step.numpy())
            if skip == 0:
                for var, zero in zip(self._carried, self._zero_states()):
                    var.assign(zero)  # a new epoch starts from zero state
            bar = keras.utils.Progbar(steps_per_epoch, verbose=(1 if sys.stdout.isatty() else 2) if self.verbose else 0,
                                      stateful_metrics=["ppl", "tok/s", "lr"])
            seen = 0
            for batch in self._epoch_batches(train_stream, epoch, skip):
                seed = tf.stack([tf.constant(cfg.seed, tf.int64), self._global_step])
                nll, count = self._run_batch(batch, tf.cast(seed, tf.int32))
                self._nll.assign_add(nll)
                self._tokens.assign_add(count)
                self._tokens_seen.assign_add(count)
                self._step.assign_add(1)
                self._global_step.assign_add(1)
                seen += int(count)
                step = int(self._step.numpy())
                elapsed = time.perf_counter() - started
                bar.update(step, [("ppl", math.exp(float(self._nll.numpy()) / max(int(self._tokens.numpy()), 1))),
                                  ("tok/s", seen / max(elapsed, 1e-9)), ("lr", lr)])
                if cfg.checkpoint_every and int(self._global_step.numpy()) % cfg.checkpoint_every == 0:
                    self.save()
            seconds = time.perf_counter() - started
            record = self._end_epoch(epoch, lr, seen, seconds, valid_stream)
            if on_epoch_end is not None:
                on_epoch_end(record)
        return self.history

    def _end_epoch(self, epoch: int, lr: float, seen: int, seconds: float, valid_stream) -> dict:
        train_loss = float(self._nll.numpy()) / max(int(self._tokens.numpy()), 1)
        history = self.history
        best = min([h["valid_ppl"] for h in history], default=math.inf)
        with self.evaluation_weights():  # nt_asgd: the average, once averaging has started
            valid = self.evaluate(valid_stream)
            improved = valid.perplexity < best * (1 - MIN_IMPROVEMENT)
            if improved:
                self._save_best()
        record = {
            "epoch": epoch + 1, "train_loss": train_loss, "train_ppl": math.exp(train_loss),
            "valid_loss": valid.loss, "valid_ppl": valid.perplexity, "learning_rate": lr,
            "tokens_per_sec": seen / max(seconds, 1e-9), "seconds": seconds,
            "tokens_seen": int(self._tokens_seen.numpy()),
            "improved": improved,
        }
        if self._averages is not None:
            record["averaged"] = float(self._averages.active)
            if not self._averages.active and nt_asgd_switch([h["valid_ppl"] for h in history],
                                                            valid.perplexity, self.config.nonmono):
                self._averages.start()  # the next epoch's steps are averaged
                if self.verbose:
                    print(f"epoch {epoch + 1}: valid ppl {valid.perplexity:.2f} is worse than the best of "
                          f"{self.config.nonmono} epochs before; averaging the weights from now on (NT-ASGD)",
                          flush=True)
        self._history.assign(json.dumps(history + [record]))
        self._epoch.assign_add(1)
        self._step.assign(0)
        self._nll.assign(0.0)
        self._tokens.assign(0)
        self.save()
        if self.verbose:
            print(f"epoch {epoch + 1}: train ppl {record['train_ppl']:.2f}, valid ppl "
                  f"{record['valid_ppl']:.2f}, lr {lr:g}, {record['tokens_per_sec']:,.0f} tok/s", flush=True)
        return record

    def _should_stop(self) -> bool:
        patience = self.config.early_stopping_patience
        history = self.history
        if not patience or len(history) <= patience:
            return False
        return not any(h["improved"] for h in history[-patience:])

    def evaluate(self, stream: np.ndarray):
        """Perplexity of `stream` with the trainer's compiled evaluation step."""
        return evaluate(self.model, stream, eval_step=self._eval_step)

    @contextlib.contextmanager
    def evaluation_weights(self):
        """Inside, the model holds the weights to evaluate and keep: under nt_asgd once
        averaging has started, the average; else (and after) the trained weights."""
        if self._averages is None or not self._averages.active:
            yield
            return
        trained = [v.numpy() for v in self.model.trainable_variables]
        for v, a in zip(self.model.trainable_variables, self._averages.values):
            v.assign(a)
        try:
            yield
        finally:
            for v, w in zip(self.model.trainable_variables, trained):
                v.assign(w)

    def best_weights_path(self) -> str:
        """`<run_dir>/best.weights.h5`: the weights of the best valid perplexity so far."""
        return os.path.join(self.run_dir, "best.weights.h5")

    def _save_best(self) -> None:
        if not self.is_chief:
            return
        os.makedirs(self.run_dir, exist_ok=True)
        tmp = os.path.join(self.run_dir, "best.tmp.weights.h5")
        self.model.save_weights(tmp)
        os.replace(tmp, self.best_weights_path())
