"""Preprocessing of text pairs end to end on tiny corpora (real Beam DirectRunner): exact
ids, vocabularies, stats, skips, bad input; and the trainer's bucketed pair batches."""

import glob
import json
import os

import numpy as np
import pytest

from pipeline.core.config_loader import load_config
from pipeline.core.errors import ConfigError, InputDataError
from pipeline.preprocess.run import run_preprocess

from conftest import CORPORA, write

SPECIALS = ["<pad>", "<unk>", "<bos>", "<eos>"]


def _config(tmp_path, *overrides):
    return load_config(None, [f"preprocess.output_dir={tmp_path / 'data'}", *overrides])


def _pairs_files(tmp_path, train=("the cat sat\nthe dog\na cat\n", "die katze sass\nder hund\neine katze\n"),
                 valid=("the cat\n", "die katze\n"), test=("a dog\n", "ein hund\n")):
    overrides = ["data.format=pairs"]
    for split, (source, target) in (("train", train), ("valid", valid), ("test", test)):
        overrides += [f"data.source_{split}={write(tmp_path / 'c' / f'{split}.en', source)}",
                      f"data.target_{split}={write(tmp_path / 'c' / f'{split}.de', target)}"]
    return overrides


def _records(dataset_dir, split):
    import tensorflow as tf

    from pipeline.core.pair_records import parse_pair_example

    out = []
    for path in sorted(glob.glob(os.path.join(dataset_dir, f"{split}-*.tfrecord.gz"))):
        for raw in tf.data.TFRecordDataset(path, compression_type="GZIP").as_numpy_iterator():
            out.append(parse_pair_example(raw))
    return sorted(out, key=lambda r: r["pair"])


def _ids(dataset_dir, split):
    return [(r["source_ids"], r["target_ids"]) for r in _records(dataset_dir, split)]


def _folders(tmp_path):
    root = tmp_path / "data"
    return sorted(os.listdir(root)) if root.exists() else []


def test_aligned_files_give_exact_records_vocab_and_stats(tmp_path):
    result = run_preprocess(_config(tmp_path, *_pairs_files(tmp_path)))
    ds = result.dataset_dir
    vocab = open(os.path.join(ds, "vocab.txt")).read().split("\n")
    # Counts over both sides of train: cat katze the 2; the rest 1, by code point.
    assert vocab == [*SPECIALS, "cat", "katze", "the", "a", "der", "die", "dog", "eine", "hund",
                     "sass", "sat", ""]
    assert _records(ds, "train") == [
        {"source_ids": [6, 4, 14, 3], "target_ids": [9, 5, 13, 3], "pair": 0},
        {"source_ids": [6, 10, 3], "target_ids": [8, 12, 3], "pair": 1},
        {"source_ids": [7, 4, 3], "target_ids": [11, 5, 3], "pair": 2},
    ]
    assert _ids(ds, "valid") == [([6, 4, 3], [9, 5, 3])]
    assert _ids(ds, "test") == [([7, 10, 3], [1, 12, 3])]  # "ein" is not in the vocabulary
    stats = json.load(open(os.path.join(ds, "stats.json")))
    assert (stats["kind"], stats["format"], stats["shared_vocab"], stats["vocab_size"]) == ("pairs", "pairs", True, 15)
    assert stats["eos"] == {"source": True, "target": True}
    train, test = stats["splits"]["train"], stats["splits"]["test"]
    assert (train["pairs"], train["pairs_read"], train["source"]["tokens"], train["target"]["tokens"]) == (3, 3, 10, 10)
    source = train["source"]
    assert (source["length_max"], source["length_p50"], source["length_mean"]) == (4, 3, 3.333)
    assert (test["source"]["oov_rate"], test["target"]["oov_tokens"]) == (0.0, 1)
    assert test["target"]["oov_rate"] == pytest.approx(1 / 3)
    assert [i["lines"] for i in stats["inputs"]] == [3, 3, 1, 1, 1, 1]
    assert stats["fingerprint"].startswith(os.path.basename(ds))
    assert sorted(os.listdir(ds)) == ["stats.json", "test-00000-of-00001.tfrecord.gz", "tokenizer.json",
                                      "train-00000-of-00001.tfrecord.gz", "valid-00000-of-00001.tfrecord.gz",
                                      "vocab.txt"]
    again = run_preprocess(_config(tmp_path, *_pairs_files(tmp_path)))
    assert again.skipped and again.dataset_dir == ds

    # The dataset's tokenizers give the records' ids: what a serving graph would run.
    import tensorflow as tf

    from pipeline.core.pair_records import pair_tokenizers

    tokenizers = pair_tokenizers(ds)
    assert tokenizers["source"].encode_lines(tf.constant(["the cat sat"])).to_list() == [[6, 4, 14, 3]]
    assert tokenizers["target"].encode_lines(tf.constant(["ein hund"])).to_list() == [[1, 12, 3]]


def test_separate_vocabularies_and_source_without_eos(tmp_path):
    config = _config(tmp_path, *_pairs_files(tmp_path), "tokenizer.shared_vocab=false", "tokenizer.add_eos=false")
    ds = run_preprocess(config).dataset_dir
    assert open(os.path.join(ds, "source_vocab.txt")).read().split("\n") == [
        *SPECIALS, "cat", "the", "a", "dog", "sat", ""]
    assert open(os.path.join(ds, "target_vocab.txt")).read().split("\n") == [
        *SPECIALS, "katze", "der", "die", "eine", "hund", "sass", ""]
    assert not os.path.exists(os.path.join(ds, "vocab.txt"))
    assert _ids(ds, "train") == [([5, 4, 8], [6, 4, 9, 3]), ([5, 7], [5, 8, 3]), ([6, 4], [7, 4, 3])]
    assert _ids(ds, "test") == [([6, 7], [1, 8, 3])]
    source = json.load(open(os.path.join(ds, "source_tokenizer.json")))
    target = json.load(open(os.path.join(ds, "target_tokenizer.json")))
    assert (source["vocab_file"], source["vocab_size"], source["add_eos"]) == ("source_vocab.txt", 9, False)
    assert (target["vocab_file"], target["vocab_size"], target["add_eos"]) == ("target_vocab.txt", 10, True)
    stats = json.load(open(os.path.join(ds, "stats.json")))
    assert "vocab_size" not in stats and stats["vocab"]["target"] == {
        "size": 10, "file": "target_vocab.txt", "tokenizer": "target_tokenizer.json"}
    assert stats["eos"] == {"source": False, "target": True}


def test_misaligned_line_counts_are_an_error_and_leave_nothing(tmp_path):
    files = _pairs_files(tmp_path, valid=("the cat\nthe dog\n", "die katze\n"))
    with pytest.raises(InputDataError) as err:
        run_preprocess(_config(tmp_path, *files))
    message = str(err.value)
    assert "misaligned pair files:" in message and "\n" not in message
    assert f"{tmp_path / 'c' / 'valid.en'} has 2 lines but {tmp_path / 'c' / 'valid.de'} has 1" in message
    assert _folders(tmp_path) == []  # no dataset, no temporary folder


def test_lines_pair_exactly_across_blocks_files_and_compression(tmp_path, monkeypatch):
    import gzip

    import pipeline.preprocess.pairs as pairs_preprocess

    os.makedirs(tmp_path / "parts")
    monkeypatch.setattr(pairs_preprocess, "BLOCK_BYTES", 16)  # many blocks per file
    source = [f"s{g} " + "w " * (g % 5) for g in range(42)]
    target = [f"t{g}" + " v" * (g % 3) for g in range(42)]
    write(tmp_path / "parts" / "p1.en", "".join(f"{line}\n" for line in source[:30]))
    with gzip.open(tmp_path / "parts" / "p2.en.gz", "wt") as f:  # one block: gzip cannot seek
        f.write("".join(f"{line}\n" for line in source[30:]))
    write(tmp_path / "parts" / "p1.de", "".join(f"{line}\r\n" for line in target[:30]))
    write(tmp_path / "parts" / "p2.de", "".join(f"{line}\n" for line in target[30:]).rstrip("\n"))
    files = _pairs_files(tmp_path)
    parts = tmp_path / "parts"
    files[1:3] = [f"data.source_train={parts / 'p*.en*'}", f"data.target_train={parts / 'p*.de'}"]
    result = run_preprocess(_config(tmp_path, *files))
    vocab = open(os.path.join(result.dataset_dir, "vocab.txt")).read().split("\n")
    records = _records(result.dataset_dir, "train")
    assert [r["pair"] for r in records] == list(range(42))
    for r in records:
        g = r["pair"]
        assert [vocab[i] for i in r["source_ids"]] == source[g].split() + ["<eos>"]
        assert [vocab[i] for i in r["target_ids"]] == target[g].split() + ["<eos>"]
    assert [i["lines"] for i in result.stats["inputs"][:4]] == [30, 12, 30, 12]


def test_unequal_numbers_of_files_are_an_error(tmp_path):
    files = _pairs_files(tmp_path)
    extra = write(tmp_path / "c" / "more.en", "a dog\n")
    config = _config(tmp_path, *files, f"data.source_train=[{tmp_path / 'c' / 'train.en'}, {extra}]")
    with pytest.raises(InputDataError, match="data.source_train matches 2 files but data.target_train matches 1"):
        run_preprocess(config)
    assert _folders(tmp_path) == []


def test_empty_sides_and_long_pairs_are_skipped_and_counted(tmp_path):
    train = ("the cat sat\n\nthe dog\na cat a cat a cat\nthe cat\n",
             "die katze sass\nder hund\n  \neine katze\ndie katze\n")
    config = _config(tmp_path, *_pairs_files(tmp_path, train=train), "preprocess.max_pair_tokens=3")
    result = run_preprocess(config)
    train_stats = result.stats["splits"]["train"]
    assert (train_stats["pairs_read"], train_stats["pairs"]) == (5, 2)
    assert (train_stats["skipped_empty"], train_stats["skipped_too_long"]) == (2, 1)
    # Pair 1 (empty source) and 2 (blank target) are skipped; pair 3 has 6 source tokens.
    assert [r["pair"] for r in _records(result.dataset_dir, "train")] == [0, 4]
    assert max(len(s) for s, t in _ids(result.dataset_dir, "train")) == 4  # 3 tokens + <eos>


def test_tsv_pairs_by_column_index_and_by_header_name(tmp_path):
    rows = "id\ten\tde\n1\tthe cat\tdie katze\n2\tthe dog\n3\ta dog\tein hund\n"
    train = write(tmp_path / "c" / "train.tsv", rows)
    valid = write(tmp_path / "c" / "valid.tsv", "id\ten\tde\n9\tthe cat\tdie katze\n")
    test = write(tmp_path / "c" / "test.tsv", "id\ten\tde\n8\ta cat\teine katze\n")
    common = ["data.format=pairs_tsv", f"data.train={train}", f"data.valid={valid}", f"data.test={test}"]
    by_name = run_preprocess(_config(tmp_path, *common, "data.source_field=en", "data.target_field=de"))
    train_stats = by_name.stats["splits"]["train"]
    assert (train_stats["pairs_read"], train_stats["pairs"], train_stats["skipped_bad_records"]) == (3, 2, 1)
    vocab = open(os.path.join(by_name.dataset_dir, "vocab.txt")).read().split("\n")
    assert vocab == [*SPECIALS, "a", "cat", "die", "dog", "ein", "hund", "katze", "the", ""]
    assert _records(by_name.dataset_dir, "train") == [
        {"source_ids": [11, 5, 3], "target_ids": [6, 10, 3], "pair": 0},
        {"source_ids": [4, 7, 3], "target_ids": [8, 9, 3], "pair": 2},
    ]
    # Columns by index read the header line as a pair: swapping the sides changes the data.
    by_index = run_preprocess(_config(tmp_path, *common, "data.source_field=2", "data.target_field=1"))
    assert by_index.stats["splits"]["train"]["pairs"] == 3
    assert _records(by_index.dataset_dir, "train")[0]["pair"] == 0
    with pytest.raises(InputDataError, match=r"data.source_field = 'fr': the header line of .*train.tsv has no "
                                             r"such column \(it has: 'id', 'en', 'de'\)"):
        run_preprocess(_config(tmp_path, *common, "data.source_field=fr", "data.target_field=de"))


def test_jsonl_pairs_with_named_fields(tmp_path):
    train = write(tmp_path / "c" / "train.jsonl", "\n".join([
        json.dumps({"en": "the cat", "de": "die katze"}),
        "{not json",
        json.dumps({"en": "the dog"}),
        json.dumps({"en": "a dog", "de": 7}),
        json.dumps({"de": "ein hund", "en": "a dog", "id": 4}),
    ]) + "\n")
    valid = write(tmp_path / "c" / "valid.jsonl", json.dumps({"en": "the cat", "de": "die katze"}) + "\n")
    test = write(tmp_path / "c" / "test.jsonl", json.dumps({"en": "a cat", "de": "eine katze"}) + "\n")
    config = _config(tmp_path, "data.format=pairs_jsonl", f"data.train={train}", f"data.valid={valid}",
                     f"data.test={test}", "data.source_field=en", "data.target_field=de")
    result = run_preprocess(config)
    stats = result.stats["splits"]["train"]
    assert (stats["pairs_read"], stats["pairs"], stats["skipped_bad_records"]) == (5, 2, 3)
    assert _records(result.dataset_dir, "train") == [
        {"source_ids": [11, 5, 3], "target_ids": [6, 10, 3], "pair": 0},
        {"source_ids": [4, 7, 3], "target_ids": [8, 9, 3], "pair": 4},
    ]
    assert _ids(result.dataset_dir, "test") == [([4, 5, 3], [1, 10, 3])]


def test_hash_split_of_train_pairs_is_stable_and_complete(tmp_path):
    source = write(tmp_path / "c" / "all.en", "".join(f"sentence {i}\n" for i in range(200)))
    target = write(tmp_path / "c" / "all.de", "".join(f"satz {i}\n" for i in range(200)))
    overrides = ["data.format=pairs", f"data.source_train={source}", f"data.target_train={target}",
                 "data.valid_fraction=0.2", "data.test_fraction=0.1"]
    result = run_preprocess(_config(tmp_path, *overrides))
    pairs = {s: [r["pair"] for r in _records(result.dataset_dir, s)] for s in ("train", "valid", "test")}
    assert sorted(p for ps in pairs.values() for p in ps) == list(range(200))
    assert 20 <= len(pairs["valid"]) <= 60 and 5 <= len(pairs["test"]) <= 35
    again = load_config(None, [f"preprocess.output_dir={tmp_path / 'again'}", *overrides])
    other = run_preprocess(again)
    assert _records(other.dataset_dir, "valid") == _records(result.dataset_dir, "valid")


@pytest.mark.parametrize("overrides, message", [
    (["data.format=pairs", "data.source_train=a.en"],
     "data.format: pairs needs data.source_train and data.target_train"),
    (["data.format=pairs", "data.source_train=a.en", "data.target_train=a.de", "data.source_valid=v.en"],
     "data.source_valid is set but data.target_valid is empty"),
    (["data.format=pairs", "data.source_train=a.en", "data.target_train=a.de", "data.valid=v.txt"],
     "data.valid is not read with data.format: pairs"),
    (["data.format=lines", "data.source_train=a.en"], "data.source_train is read only with data.format: pairs"),
    (["data.format=pairs_jsonl", "data.train=a.jsonl", "data.source_field=0"],
     "data.source_field = 0: pairs_jsonl needs a field name"),
    (["data.format=pairs_tsv", "data.train=a.tsv", "data.target_field=0"],
     "data.source_field and data.target_field are both 0"),
    (["data.format=pairs_tsv"], "data.train is the built-in demo corpus"),
    (["data.source_field=en"], "data.source_field / data.target_field are read only with"),
    (["preprocess.max_pair_tokens=-1"], "preprocess.max_pair_tokens = -1"),
])
def test_config_errors_name_the_keys(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_bucketed_batches_are_padded_per_batch():
    from trainer.pairs_data import PairSplit, auto_bucket_boundaries, pair_batches

    rows = [([5, 3], [6, 3]), ([5, 7, 8, 9, 3], [6, 3]), ([5, 7, 3], [6, 7, 8, 3]), ([9, 3], [9, 9, 3])]

    def flat(side):
        values = np.concatenate([np.array(r[side], np.int32) for r in rows])
        return values, np.cumsum([0] + [len(r[side]) for r in rows]).astype(np.int64)

    pairs = PairSplit(np.arange(4, dtype=np.int64) * 10, *flat(0), *flat(1))
    batches = [[t.numpy().tolist() for t in b]
               for b in pair_batches(pairs, batch_size=2, bucket_boundaries=[4], with_pair=True)]
    assert batches == [
        # The bucket of lengths >= 4 fills first (pairs 1 and 2); each tensor is padded
        # with <pad> = 0 to its own longest row in the batch.
        [[[5, 7, 8, 9, 3], [5, 7, 3, 0, 0]], [[2, 6, 0, 0], [2, 6, 7, 8]], [[6, 3, 0, 0], [6, 7, 8, 3]], [10, 20]],
        # Then lengths < 4: pairs 0 and 3.
        [[[5, 3], [9, 3]], [[2, 6, 0], [2, 9, 9]], [[6, 3, 0], [9, 9, 3]], [0, 30]],
    ]
    one_bucket = [[t.numpy().tolist() for t in b] for b in pair_batches(pairs, batch_size=3, bucket_boundaries=None)]
    assert [len(b[0]) for b in one_bucket] == [3, 1] and one_bucket[0][0][0] == [5, 3, 0, 0, 0]
    assert auto_bucket_boundaries(pairs.lengths(), num_buckets=4) == [3, 4, 5]
    first = [b[0].numpy().tolist() for b in pair_batches(pairs, 2, shuffle=True, seed=7)]
    again = [b[0].numpy().tolist() for b in pair_batches(pairs, 2, shuffle=True, seed=7)]
    assert first == again
    with pytest.raises(ValueError, match="ascending positive lengths"):
        pair_batches(pairs, 2, bucket_boundaries=[5, 3])


def test_load_pairs_reads_a_dataset_in_pair_order(tmp_path):
    from trainer.pairs_data import load_pairs, pair_batches

    ds = run_preprocess(_config(tmp_path, *_pairs_files(tmp_path))).dataset_dir
    pairs = load_pairs(ds, "train")
    assert pairs.pair.tolist() == [0, 1, 2]
    assert pairs.source(0).tolist() == [6, 4, 14, 3] and pairs.target(2).tolist() == [11, 5, 3]
    (source, target_in, target_out), = [[t.numpy().tolist() for t in b] for b in pair_batches(pairs, 8, None)]
    assert source == [[6, 4, 14, 3], [6, 10, 3, 0], [7, 4, 3, 0]]
    assert target_in == [[2, 9, 5, 13], [2, 8, 12, 0], [2, 11, 5, 0]]
    assert target_out == [[9, 5, 13, 3], [8, 12, 3, 0], [11, 5, 3, 0]]


@pytest.mark.slow
def test_multi30k_slice(tmp_path):
    root = os.path.join(CORPORA, "multi30k")
    if not os.path.exists(os.path.join(root, "train.en")):
        pytest.skip(f"Multi30k is not at {root}; see ../shared/corpora/README.md")
    slices = {}
    for lang in ("en", "de"):  # a slice of train in tmp_path; valid and test read in place
        with open(os.path.join(root, f"train.{lang}"), encoding="utf-8") as f:
            slices[lang] = [next(f) for _ in range(2000)]
        write(tmp_path / "m30k" / f"train.{lang}", "".join(slices[lang]))
    config = _config(tmp_path, "data.format=pairs", f"data.source_train={tmp_path / 'm30k' / 'train.en'}",
                     f"data.target_train={tmp_path / 'm30k' / 'train.de'}",
                     f"data.source_valid={root}/valid.en", f"data.target_valid={root}/valid.de",
                     f"data.source_test={root}/test.en", f"data.target_test={root}/test.de",
                     "tokenizer.kind=subword", "tokenizer.lowercase=true", "tokenizer.max_vocab=2000",
                     "tokenizer.shared_vocab=false", "preprocess.max_pair_tokens=40")
    result = run_preprocess(config)
    splits = result.stats["splits"]
    assert [splits[s]["pairs_read"] for s in ("train", "valid", "test")] == [2000, 1014, 1000]
    for s in ("train", "valid", "test"):
        assert splits[s]["pairs"] + splits[s]["skipped_too_long"] == splits[s]["pairs_read"]
        assert splits[s]["skipped_too_long"] < 0.1 * splits[s]["pairs_read"]  # pieces of rare words
        for side in ("source", "target"):
            assert 8 < splits[s][side]["length_mean"] < 30 and splits[s][side]["length_max"] <= 41
    assert splits["train"]["target"]["oov_rate"] <= splits["test"]["target"]["oov_rate"] < 0.05
    sizes = [result.stats["vocab"][side]["size"] for side in ("source", "target")]
    assert sizes[0] != sizes[1] and all(1000 < n < 4000 for n in sizes)  # WordPiece: about max_vocab

    import tensorflow as tf

    from pipeline.core.pair_records import pair_tokenizers
    from trainer.pairs_data import load_pairs

    tokenizers = pair_tokenizers(result.dataset_dir)
    test = load_pairs(result.dataset_dir, "test")
    with open(os.path.join(root, "test.de"), encoding="utf-8") as f:
        line = f.readlines()[int(test.pair[0])].strip()
    expected = tokenizers["target"].encode_lines(tf.constant([line])).to_list()[0]
    assert test.target(0).tolist() == expected
