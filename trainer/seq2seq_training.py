"""Training and evaluation of the sequence-to-sequence model: the language model's loop
(checkpoints that resume exactly, LR schedule, clipping, early stopping, Progbar) with
teacher-forced batches of pairs instead of BPTT windows.

Batches come from `trainer.pairs_data.pair_batches`, bucketed by length, reshuffled each
epoch with a seed of (train.seed, epoch): a resumed run rebuilds the epoch's order and
skips the batches it has done. The loss is the mean NLL over real target tokens (<pad>
masked), <eos> included; perplexity is exp(total NLL / target tokens) over a split.

Example:
    >>> trainer = Seq2SeqTrainer(model, config.train, run_dir)
    >>> history = trainer.fit(load_pairs(d, "train"), load_pairs(d, "valid"))
    >>> trainer.evaluate(load_pairs(d, "test")).perplexity
    9.7
"""

from __future__ import annotations

import tensorflow as tf

from pipeline.core.constants import PAD_ID
from trainer.evaluation import EvalResult
from trainer.pairs_data import PairSplit, pair_batches
from trainer.training import Trainer, replica_rows

EVAL_BATCH = 128


class Seq2SeqTrainer(Trainer):
    """`Trainer` for a `Seq2SeqModel`: batch size counts pairs; no state is carried."""

    def _zero_states(self) -> list[tf.Tensor]:
        return []

    def _replica_loss(self, batch, states, seed, replicas):
        source, target_in, target_out = replica_rows(batch, replicas)
        nll = self.model.nll(source, target_in, target_out, training=True, seed=seed)
        weights = tf.not_equal(target_out, PAD_ID)
        tokens = tf.reduce_sum(tf.cast(weights, tf.float32))
        if replicas > 1:
            tokens = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, tokens)
        return nll, weights, tf.maximum(tokens, 1.0), [], 0.0

    def _epoch_batches(self, train_data: PairSplit, epoch: int, skip: int) -> tf.data.Dataset:
        seed = self.config.seed * 1_000_003 + epoch  # each epoch its own, reproducible order
        # Under several replicas every batch must split evenly: full batches only.
        return pair_batches(train_data, self.global_batch, shuffle=True, seed=seed,
                            drop_remainder=self.replicas > 1).skip(skip)

    def _steps_per_epoch(self, train_data) -> int | None:
        return None  # buckets make the count data-dependent; Progbar counts up

    def _run_batch(self, batch, seed):
        nll, count, _ = self._train_step(*batch, [], seed)
        return nll, count

    def _make_eval_step(self):
        return make_pairs_eval_step(self.model)

    def evaluate(self, pairs: PairSplit) -> EvalResult:
        """NLL and perplexity over every real target token of `pairs` (<eos> included)."""
        return evaluate_pairs(self.model, pairs, self._eval_step)


def make_pairs_eval_step(model):
    """Compiled (source, target_in, target_out) [B, *] -> (NLL sum, real target tokens)."""
    ids = tf.TensorSpec([None, None], tf.int32)

    @tf.function(input_signature=[ids, ids, ids])
    def eval_step(source, target_in, target_out):
        nll = model.nll(source, target_in, target_out, training=False)
        weights = tf.cast(tf.not_equal(target_out, PAD_ID), tf.float64)
        return tf.reduce_sum(tf.cast(nll, tf.float64) * weights), tf.reduce_sum(weights)

    return eval_step


def evaluate_pairs(model, pairs: PairSplit, eval_step=None) -> EvalResult:
    """Teacher-forced NLL of every target token of `pairs` under `model`."""
    step = eval_step or make_pairs_eval_step(model)
    total, tokens = 0.0, 0.0
    for source, target_in, target_out in pair_batches(pairs, EVAL_BATCH):
        nll, count = step(source, target_in, target_out)
        total += float(nll)
        tokens += float(count)
    return EvalResult(total, int(round(tokens)))
