"""NT-ASGD (Merity et al. 2017) for the trainer: when to start averaging, and the running
average of the weights that evaluation, the kept weights and the export then use.

Example:
    >>> nt_asgd_switch([150.0, 120.0, 121.0, 122.0], 123.0, nonmono=2)
    True
"""

from __future__ import annotations

import tensorflow as tf


def nt_asgd_switch(previous_ppl: list[float], valid_ppl: float, nonmono: int) -> bool:
    """NT-ASGD's trigger (Merity et al. 2017): this epoch's valid perplexity is worse than
    the best of the epochs before the last `nonmono` ones.

    Example:
        >>> nt_asgd_switch([150.0, 120.0, 121.0, 122.0], 123.0, nonmono=2)   # 123 > min(150, 120)
        True
        >>> nt_asgd_switch([150.0, 120.0], 119.0, nonmono=1)
        False
    """
    return len(previous_ppl) > nonmono and valid_ppl > min(previous_ppl[:-nonmono])


class WeightAverage(tf.Module):
    """The running average of the trainable weights after each step since `start()` (ASGD's
    iterate average): n averaged steps so far, avg += (w - avg) / n. Plain variables outside
    any distribution strategy, so every worker keeps the same copy and a checkpoint holds it.

    Example:
        >>> average = WeightAverage(model.trainable_variables); average.start()
        >>> average.update(model.trainable_variables)   # inside the train step, after the update
    """

    def __init__(self, variables) -> None:
        super().__init__(name="weight_average")
        self.values = [tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False) for v in variables]
        self.steps = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.started = tf.Variable(False, trainable=False)

    @property
    def active(self) -> bool:
        """Whether averaging has started (and the average holds at least one step)."""
        return bool(self.started.numpy()) and int(self.steps.numpy()) > 0

    def start(self) -> None:
        """The steps from now on are averaged."""
        self.started.assign(True)
        self.steps.assign(0)

    def update(self, variables) -> None:
        """In a step's graph: adds the weights just updated to the average, if started."""
        def add():
            n = self.steps.assign_add(1)
            rate = 1.0 / tf.cast(n, tf.float32)
            return tf.group([a.assign_add((tf.cast(v, a.dtype) - a) * tf.cast(rate, a.dtype))
                             for a, v in zip(self.values, variables)])

        tf.cond(self.started, add, tf.no_op)
