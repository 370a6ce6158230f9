"""Penn Treebank (Mikolov split) through `lmpipe preprocess`: the published counts exactly."""

import json
import os

import pytest

from pipeline.orchestrate.cli import main

from conftest import CORPORA

PTB = os.path.join(CORPORA, "ptb")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(PTB), reason=f"PTB corpus not found at {PTB} (../shared/corpora/ptb)")
def test_ptb_token_counts_vocab_and_oov(tmp_path):
    args = ["preprocess", "--set", f"preprocess.output_dir={tmp_path}", "--set", "tokenizer.kind=word",
            "--set", "tokenizer.add_eos=true", "--set", "tokenizer.max_vocab=10000",
            "--set", "tokenizer.min_count=1", "--set", "tokenizer.lowercase=false"]
    for split in ("train", "valid", "test"):
        args += ["--set", f"data.{split}={PTB}/ptb.{split}.txt"]
    assert main(args) == 0
    (ds,) = [p for p in os.listdir(tmp_path) if not p.startswith(("_", "."))]
    stats = json.load(open(tmp_path / ds / "stats.json"))
    splits = stats["splits"]
    assert [splits[s]["tokens"] for s in ("train", "valid", "test")] == [929_589, 73_760, 82_430]
    assert [splits[s]["lines"] for s in ("train", "valid", "test")] == [42_068, 3_370, 3_761]
    # PTB's 10,000 types are 9,998 words + <unk> + <eos>; we add <pad> and <bos>.
    assert stats["vocab_size"] == 10_002
    assert [splits[s]["oov_tokens"] for s in ("train", "valid", "test")] == [0, 0, 0]
    # The only unknowns are PTB's own <unk> tokens (README: 45,020 / 3,485 / 4,794).
    assert [splits[s]["unk_tokens"] for s in ("train", "valid", "test")] == [45_020, 3_485, 4_794]
