"""What the machine can do fast: a warning when a chosen precision will be slow here.

bfloat16 matmuls are native on GPUs and on CPUs with AMX or AVX512-BF16 (`/proc/cpuinfo`
flags `amx_bf16`, `avx512_bf16`). Without them TensorFlow emulates them: on the 2-core
AVX512F machine these benchmarks ran on, 62 GFLOP/s in bfloat16 against ~305 in float32,
and `train.precision: mixed_bfloat16` trained at 0.3x the float32 speed.
"""

from __future__ import annotations

import tensorflow as tf

BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str]:
    """The CPU feature flags Linux reports (empty where the file does not exist)."""
    try:
        with open(cpuinfo) as f:
            return {flag for line in f if line.startswith("flags") for flag in line.split(":", 1)[1].split()}
    except OSError:
        return set()


def precision_warning(precision: str, flags: set[str] | None = None, gpus: int | None = None) -> str | None:
    """A one-line warning when `precision` will run emulated (slower than float32), else None.

    >>> precision_warning("mixed_bfloat16", flags={"avx512f"}, gpus=0)[:45]
    'train.precision=mixed_bfloat16 on a CPU witho'
    >>> precision_warning("mixed_bfloat16", flags={"amx_bf16"}, gpus=0) is None
    True
    """
    if precision != "mixed_bfloat16":
        return None
    gpus = len(tf.config.list_physical_devices("GPU")) if gpus is None else gpus
    flags = cpu_flags() if flags is None else flags
    if gpus or any(f in flags for f in BF16_CPU_FLAGS):
        return None
    return ("train.precision=mixed_bfloat16 on a CPU without AMX or AVX512-BF16 and no GPU: TensorFlow "
            "emulates bfloat16 matmuls here, so training runs slower than float32 (measured 0.3x); "
            "set train.precision=float32 unless the run moves to such a CPU or a GPU")
