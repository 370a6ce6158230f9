"""A normal `lmpipe` command prints its own output first: no TensorFlow, absl or Beam log
lines (oneDNN, CUDA probing, cuInit, apitools, crc32c) before it."""

import os
import re
import subprocess
import sys

from conftest import write

NOISE = re.compile(r"^[IWEF]\d{4} |absl::InitializeLog|^WARNING (root|apache_beam|tensorflow)|oneDNN|cuda", re.I)


def test_preprocess_prints_its_own_lines_first(tmp_path):
    corpus = write(tmp_path / "corpus.txt", "".join(f"the cat {i % 5} sat .\n" for i in range(200)))
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # as a user runs it
    lmpipe = os.path.join(os.path.dirname(sys.executable), "lmpipe")
    out = subprocess.run([lmpipe, "preprocess", "--set", f"data.train={corpus}", "--set", "data.format=lines",
                          "--set", f"preprocess.output_dir={tmp_path / 'data'}"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert [line for line in out.stderr.splitlines() if NOISE.search(line)] == []
    assert out.stderr == "" and out.stdout.startswith("dataset written: ")
