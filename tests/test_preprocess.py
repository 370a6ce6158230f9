"""`lmpipe preprocess` end to end on tiny corpora: exact ids, stats, skips, bad input."""

import json
import os

import pytest

from pipeline.orchestrate.cli import main

from conftest import preprocess_args, read_split, write


def _dataset_dirs(tmp_path):
    root = tmp_path / "data"
    return sorted(p for p in os.listdir(root) if not p.startswith("_")) if root.exists() else []


def _run(tmp_path, corpus, *extra):
    code = main(preprocess_args(tmp_path, corpus, *extra))
    dirs = _dataset_dirs(tmp_path)
    return code, (str(tmp_path / "data" / dirs[0]) if len(dirs) == 1 else None)


def test_exact_ids_vocab_and_stats(tmp_path, tiny_corpus, capsys):
    code, ds = _run(tmp_path, tiny_corpus)
    assert code == 0
    assert open(os.path.join(ds, "vocab.txt")).read().split("\n") == [
        "<pad>", "<unk>", "<bos>", "<eos>", "the", "cat", "dog", "sat", ""]
    assert [r["ids"] for r in read_split(ds, "train")] == [[4, 5, 7, 3, 4, 6, 3]]
    assert [r["ids"] for r in read_split(ds, "valid")] == [[4, 5, 3]]
    assert [r["ids"] for r in read_split(ds, "test")] == [[1, 5, 3]]
    stats = json.load(open(os.path.join(ds, "stats.json")))
    assert stats["vocab_size"] == 8
    test = stats["splits"]["test"]
    assert (test["documents"], test["lines"], test["tokens"], test["oov_tokens"]) == (1, 1, 3, 1)
    assert test["oov_rate"] == pytest.approx(1 / 3)
    assert test["vocab_coverage"] == pytest.approx(1 / 4)
    assert stats["fingerprint"].startswith(os.path.basename(ds))
    tok = json.load(open(os.path.join(ds, "tokenizer.json")))
    assert tok["kind"] == "word" and tok["specials"] == {"<pad>": 0, "<unk>": 1, "<bos>": 2, "<eos>": 3}
    assert "dataset written" in capsys.readouterr().out


def test_second_run_skips_and_changes_make_a_new_dataset(tmp_path, tiny_corpus, capsys):
    assert main(preprocess_args(tmp_path, tiny_corpus)) == 0
    first = _dataset_dirs(tmp_path)
    mtime = os.path.getmtime(tmp_path / "data" / first[0] / "stats.json")
    assert main(preprocess_args(tmp_path, tiny_corpus)) == 0
    assert "up to date, skipped" in capsys.readouterr().out
    assert _dataset_dirs(tmp_path) == first
    assert os.path.getmtime(tmp_path / "data" / first[0] / "stats.json") == mtime
    write(tiny_corpus["train"], "the cat sat\nthe dog ran\n")
    assert main(preprocess_args(tmp_path, tiny_corpus)) == 0
    assert len(_dataset_dirs(tmp_path)) == 2
    assert main(preprocess_args(tmp_path, tiny_corpus, "--set", "tokenizer.kind=char")) == 0
    assert len(_dataset_dirs(tmp_path)) == 3


def test_literal_unk_in_corpus_is_not_oov(tmp_path):
    corpus = {
        "train": write(tmp_path / "c" / "tr.txt", "a <unk> b\n"),
        "valid": write(tmp_path / "c" / "va.txt", "<unk> a\n"),
        "test": write(tmp_path / "c" / "te.txt", "zzz\n"),
    }
    code, ds = _run(tmp_path, corpus)
    assert code == 0
    stats = json.load(open(os.path.join(ds, "stats.json")))["splits"]
    assert [r["ids"] for r in read_split(ds, "valid")] == [[1, 4, 3]]
    assert (stats["valid"]["unk_tokens"], stats["valid"]["oov_tokens"]) == (1, 0)
    assert (stats["test"]["unk_tokens"], stats["test"]["oov_tokens"]) == (1, 1)


def test_hash_split_of_documents_lines_format(tmp_path):
    lines = "".join(f"doc number {i}\n" for i in range(200))
    corpus = {"train": write(tmp_path / "c" / "all.txt", lines)}
    code, ds = _run(tmp_path, corpus, "--set", "data.format=lines",
                    "--set", "data.valid_fraction=0.2", "--set", "data.test_fraction=0.1")
    assert code == 0
    counts = {s: len(read_split(ds, s)) for s in ("train", "valid", "test")}
    assert sum(counts.values()) == 200
    assert 20 <= counts["valid"] <= 60 and 5 <= counts["test"] <= 35
    # The same document always lands in the same split: the split is a pure function.
    again = tmp_path / "again"
    code = main(["preprocess", "--set", f"preprocess.output_dir={again}", "--set", f"data.train={corpus['train']}",
                 "--set", "data.format=lines", "--set", "data.valid_fraction=0.2", "--set", "data.test_fraction=0.1"])
    assert code == 0
    (other,) = [p for p in os.listdir(again) if not p.startswith("_")]
    assert read_split(os.path.join(again, other), "valid") == read_split(ds, "valid")


def test_builtin_demo_corpus(tmp_path):
    code = main(["preprocess", "--set", f"preprocess.output_dir={tmp_path / 'data'}",
                 "--set", "data.train=builtin:python-docs", "--set", "tokenizer.min_count=2"])
    assert code == 0
    (ds,) = _dataset_dirs(tmp_path)
    stats = json.load(open(tmp_path / "data" / ds / "stats.json"))
    assert stats["splits"]["train"]["documents"] > 50
    assert all(stats["splits"][s]["tokens"] > 1000 for s in ("train", "valid", "test"))


@pytest.mark.parametrize("case, message, code", [
    ("missing", "does not exist; check the path", 3),
    ("empty_glob", "matched no files", 3),
    ("binary", "looks binary (NUL byte at offset 3)", 3),
    ("empty_corpus", "the train split is empty: data.train holds no text", 3),
    ("typo", "unknown key 'data.trian'", 2),
    ("directory", "is a directory; give a file glob", 3),
])
def test_bad_input_one_line_error_and_no_dataset(tmp_path, tiny_corpus, capsys, case, message, code):
    corpus = dict(tiny_corpus)
    extra = []
    if case == "missing":
        corpus["train"] = str(tmp_path / "nope.txt")
    elif case == "empty_glob":
        corpus["train"] = str(tmp_path / "corpus" / "*.md")
    elif case == "binary":
        corpus["train"] = write(tmp_path / "corpus" / "model.bin", b"abc\x00\x01\x02", mode="wb")
    elif case == "empty_corpus":
        corpus["train"] = write(tmp_path / "corpus" / "blank.txt", "\n   \n\n")
    elif case == "typo":
        extra = ["--set", "data.trian=x"]
    elif case == "directory":
        corpus["train"] = str(tmp_path / "corpus")
    assert main(preprocess_args(tmp_path, corpus, *extra)) == code
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert _dataset_dirs(tmp_path) == []  # nothing under a final (or temporary) name


def test_empty_auto_split_is_an_error(tmp_path, capsys):
    corpus = {"train": write(tmp_path / "c" / "one.txt", "only one document\n")}
    assert main(preprocess_args(tmp_path, corpus)) == 3
    assert "split is empty" in capsys.readouterr().err
    assert _dataset_dirs(tmp_path) == []


def test_recoverable_data_issues_are_counted(tmp_path, tiny_corpus, capsys):
    corpus = dict(tiny_corpus)
    big_line = " ".join(["the"] * 2_600_000)  # a 10 MB single line
    corpus["train"] = write(tmp_path / "corpus" / "messy.txt",
                            b"the caf\xe9\n" + big_line.encode() + b"\n", mode="wb")
    code, ds = _run(tmp_path, corpus)
    assert code == 0
    train = json.load(open(os.path.join(ds, "stats.json")))["splits"]["train"]
    assert (train["invalid_utf8_lines"], train["long_lines_split"], train["lines"]) == (1, 1, 2)
    assert train["tokens"] == 2 + 1 + 2_600_000 + 1  # one <eos> per line, cut or not
    err = capsys.readouterr().err
    assert "1 lines had invalid UTF-8" in err and "were cut at whitespace" in err


def test_crash_leaves_no_partial_dataset(tmp_path, tiny_corpus, monkeypatch):
    import pipeline.preprocess.documents as pre

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(pre, "_write_metadata", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        main(preprocess_args(tmp_path, tiny_corpus))
    assert os.listdir(tmp_path / "data") == []


@pytest.mark.slow
def test_multiprocess_runner_gives_identical_records(tmp_path):
    text = "".join(f"line {i} of the corpus with words {i % 13}\n" for i in range(3000))
    corpus = {"train": write(tmp_path / "c" / "big.txt", text)}
    base = ["--set", "data.format=lines", "--set", "preprocess.batch_lines=64"]
    code, ds = _run(tmp_path, corpus, *base)
    assert code == 0
    other = tmp_path / "mp"
    assert main(["preprocess", "--set", f"preprocess.output_dir={other}", "--set",
                 f"data.train={corpus['train']}", *base, "--direct_num_workers=2",
                 "--direct_running_mode=multi_processing"]) == 0
    (mp,) = [p for p in os.listdir(other) if not p.startswith("_")]
    for split in ("train", "valid", "test"):
        assert read_split(os.path.join(other, mp), split) == read_split(ds, split)
