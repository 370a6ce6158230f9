"""The tf.distribute strategy of a training run (`train.distribute`).

    none          the default strategy: one process, one device
    mirrored      tf.distribute.MirroredStrategy: every local GPU (or the CPU)
    multi_worker  tf.distribute.MultiWorkerMirroredStrategy over the cluster in the
                  standard TF_CONFIG variable (Kubernetes TFJob, Vertex AI and
                  tf.distribute's own launchers all set it), e.g. for worker 1 of 2:
                  {"cluster": {"worker": ["host0:12345", "host1:12345"]},
                   "task": {"type": "worker", "index": 1}}

`train.batch_size` is per replica; the global batch is `num_replicas_in_sync` times it.
The strategy must exist before TensorFlow runs its first op in the process (collective
ops are configured at start-up), so `train_model` makes it first.

Example:
    >>> strategy = make_strategy("none")
    >>> strategy.num_replicas_in_sync
    1
"""

from __future__ import annotations

import json
import os
import socket

import tensorflow as tf

from pipeline.core.errors import ConfigError


def make_strategy(kind: str) -> tf.distribute.Strategy:
    """The strategy for `train.distribute` = `kind`; ConfigError if TF_CONFIG is unusable."""
    if kind == "none":
        return tf.distribute.get_strategy()
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy()
    if kind == "multi_worker":
        cluster_from_tf_config()  # fail with a clear message before TF does
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ConfigError(f"train.distribute={kind!r} is not one of none, mirrored, multi_worker")


def cluster_from_tf_config() -> dict:
    """The parsed TF_CONFIG: {"cluster": {...}, "task": {"type", "index"}}, checked."""
    raw = os.environ.get("TF_CONFIG", "")
    fix = ('set TF_CONFIG to {"cluster": {"worker": ["host0:port", "host1:port"]}, '
           '"task": {"type": "worker", "index": 0}} on each worker, or use train.distribute=none')
    if not raw:
        raise ConfigError(f"train.distribute=multi_worker needs the TF_CONFIG environment variable; {fix}")
    try:
        tf_config = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ConfigError(f"TF_CONFIG is not valid JSON ({e}); {fix}") from None
    cluster, task = tf_config.get("cluster"), tf_config.get("task")
    if not isinstance(cluster, dict) or not cluster or not isinstance(task, dict):
        raise ConfigError(f"TF_CONFIG needs a 'cluster' and a 'task'; {fix}")
    members = cluster.get(task.get("type"))
    index = task.get("index")
    if not isinstance(members, list) or not isinstance(index, int) or not 0 <= index < len(members):
        raise ConfigError(f"TF_CONFIG task {task} is not in its cluster {cluster}; {fix}")
    return tf_config


def free_local_ports(n: int = 1) -> list[int]:
    """n TCP ports on 127.0.0.1 that were free a moment ago."""
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def local_tf_configs(workers: int) -> list[str]:
    """TF_CONFIG values for `workers` processes on this machine (free ports on 127.0.0.1),
    one per worker index: to try `train.distribute=multi_worker` without a cluster.

    Example:
        >>> json.loads(local_tf_configs(2)[1])["task"]
        {'type': 'worker', 'index': 1}
    """
    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_local_ports(workers)]}
    return [json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}) for i in range(workers)]
