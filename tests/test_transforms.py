"""Beam transforms under TestPipeline with exact expected outputs."""

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline.core.config import DataConfig, PreprocessConfig, TokenizerConfig
from pipeline.preprocess.corpus import AUTO_SPLIT, InputFile
from pipeline.preprocess.reading import ReadBlockFn, blocks_of, cut_long_line, split_of
from pipeline.preprocess.split_stats import COUNTS_TAG
from pipeline.preprocess.vocabulary import LearnVocabulary, rank_key

from conftest import write


def _file(path, role="train"):
    import hashlib
    import os

    data = open(path, "rb").read()
    return InputFile(path=path, size=os.path.getsize(path), sha256=hashlib.sha256(data).hexdigest(), role=role)


def test_blocks_read_every_line_exactly_once(tmp_path):
    text = "".join(f"line {i} " + "x" * (i % 7) + "\n" for i in range(50)) + "last without newline"
    f = _file(write(tmp_path / "a.txt", text))
    fn = ReadBlockFn(DataConfig(train=[f.path], format="lines"), PreprocessConfig())
    for block_bytes in (7, 64, 1000, 10**6):
        lines = []
        for block in blocks_of(f, block_bytes):
            lines += [c.lines[0] for c in fn.process(block) if not isinstance(c, beam.pvalue.TaggedOutput)]
        assert lines == text.split("\n"), block_bytes


def test_text_documents_keep_order_and_first_flag(tmp_path):
    f = _file(write(tmp_path / "doc.txt", "a\n\nb\nc\nd\n"))
    fn = ReadBlockFn(DataConfig(train=[f.path]), PreprocessConfig(max_lines_per_record=2))
    out = list(fn.process((f, 0, f.size)))
    chunks = [o for o in out if not isinstance(o, beam.pvalue.TaggedOutput)]
    counts = [o.value for o in out if isinstance(o, beam.pvalue.TaggedOutput)]
    assert [(c.lines, c.offset, c.first) for c in chunks] == [(["a", "b"], 0, True), (["c", "d"], 5, False)]
    assert {c.doc for c in chunks} == {f.sha256[:16].encode()}
    assert counts == [("train", {"empty_lines_dropped": 1})]


def test_invalid_utf8_is_replaced_and_counted(tmp_path):
    f = _file(write(tmp_path / "bad.txt", b"caf\xe9 ok\nfine\n", mode="wb"))
    fn = ReadBlockFn(DataConfig(train=[f.path]), PreprocessConfig())
    out = list(fn.process((f, 0, f.size)))
    assert out[0].lines == ["caf\ufffd ok", "fine"]
    assert out[1].tag == COUNTS_TAG and out[1].value == ("train", {"invalid_utf8_lines": 1})


def test_jsonl_documents_and_bad_records(tmp_path):
    f = _file(write(tmp_path / "d.jsonl", '{"text": "one\\ntwo"}\nnot json\n{"body": "x"}\n{"text": "three"}\n'))
    fn = ReadBlockFn(DataConfig(train=[f.path], format="jsonl"), PreprocessConfig())
    out = list(fn.process((f, 0, f.size)))
    chunks = [o for o in out if not isinstance(o, beam.pvalue.TaggedOutput)]
    counts = [o.value for o in out if isinstance(o, beam.pvalue.TaggedOutput)]
    assert [c.lines for c in chunks] == [["one", "two"], ["three"]]
    assert sum(c[1]["bad_records"] for c in counts) == 2


def test_cut_long_line_and_eos_only_after_last_piece(tmp_path):
    assert cut_long_line("aaa bbb ccc", 5) == ["aaa", " bbb", " ccc"]
    assert cut_long_line("abcdefgh", 3) == ["abc", "def", "gh"]
    line = " ".join(["word"] * 500)  # 2,499 characters
    f = _file(write(tmp_path / "long.txt", line + "\nshort\n"))
    fn = ReadBlockFn(DataConfig(train=[f.path]), PreprocessConfig(max_line_chars=1000))
    out = list(fn.process((f, 0, f.size)))
    assert [len(p) for p in out[0].lines] == [999, 1000, 500, 5]
    assert "".join(out[0].lines[:3]) == line
    assert out[0].eos_after == [False, False, True, True]
    assert out[1].value == ("train", {"long_lines_split": 1})


def test_hash_split_is_stable_and_follows_fractions():
    docs = [f"{i:016x}".encode() for i in range(0, 2**64 - 1, 2**64 // 1000)]
    splits = [split_of(d, AUTO_SPLIT, 0.1, 0.2) for d in docs]
    assert splits == [split_of(d, AUTO_SPLIT, 0.1, 0.2) for d in docs]
    assert abs(splits.count("valid") - 100) <= 1 and abs(splits.count("test") - 200) <= 1
    assert split_of(docs[0], "valid", 0.0, 0.0) == "valid"


def test_rank_key_orders_by_count_then_token():
    items = [(b"b", 2), (b"a", 2), (b"ab", 2), (b"z", 5)]
    assert sorted(items, key=rank_key, reverse=True) == [(b"z", 5), (b"a", 2), (b"ab", 2), (b"b", 2)]


class _Chunk:
    def __init__(self, *lines):
        self.lines = list(lines)


def test_learn_word_vocabulary_with_min_count_and_ties():
    config = TokenizerConfig(kind="word", max_vocab=3, min_count=2)
    batches = [[_Chunk("b a c a", "d b")], [_Chunk("c c e <unk>", "e <unk>")]]
    with TestPipeline() as p:
        vocab = p | beam.Create(batches) | LearnVocabulary(config)
        # counts: c3 a2 b2 e2 d1; <unk> is reserved, never learned
        assert_that(vocab, equal_to([["<pad>", "<unk>", "<bos>", "<eos>", "c", "a", "b"]]))


def test_learn_char_vocabulary():
    config = TokenizerConfig(kind="char", max_vocab=10)
    with TestPipeline() as p:
        vocab = p | beam.Create([[_Chunk("aab", "b a")]]) | LearnVocabulary(config)
        assert_that(vocab, equal_to([["<pad>", "<unk>", "<bos>", "<eos>", "a", "b", " "]]))


def test_learn_subword_vocabulary_with_tf_text_learner():
    config = TokenizerConfig(kind="subword", max_vocab=40)
    words = "low lower lowest newer newest wider widest " * 20
    with TestPipeline() as p:
        vocab = p | beam.Create([[_Chunk(words)]]) | LearnVocabulary(config)

        def check(result):
            (v,) = result
            assert v[:4] == ["<pad>", "<unk>", "<bos>", "<eos>"]
            assert "low" in v and any(t.startswith("##") for t in v)
            assert len(v) <= 44

        assert_that(vocab, check)
