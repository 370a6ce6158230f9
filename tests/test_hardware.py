"""The bfloat16 warning follows the CPU's flags and the GPUs present."""

from trainer.hardware import cpu_flags, precision_warning


def test_bfloat16_warns_only_without_native_support():
    assert "emulates bfloat16" in precision_warning("mixed_bfloat16", flags={"avx512f", "fma"}, gpus=0)
    assert precision_warning("mixed_bfloat16", flags={"avx512f", "avx512_bf16"}, gpus=0) is None
    assert precision_warning("mixed_bfloat16", flags={"amx_bf16"}, gpus=0) is None
    assert precision_warning("mixed_bfloat16", flags=set(), gpus=1) is None
    assert precision_warning("float32", flags=set(), gpus=0) is None
    assert precision_warning("mixed_float16", flags=set(), gpus=0) is None


def test_cpu_flags_reads_the_flags_line(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f amx_bf16\nbugs\t\t: spectre\n")
    assert cpu_flags(str(info)) == {"fpu", "sse", "avx512f", "amx_bf16"}
    assert cpu_flags(str(tmp_path / "missing")) == set()
