"""The Beam preprocessing pipeline: corpus files -> TFRecords, vocab, tokenizer and stats.

`create_pipeline` is pure (it only adds steps to a Pipeline); `run_preprocess` resolves
the inputs, skips work already done (same fingerprint), runs the pipeline into a
temporary folder and renames it into place only when complete.

Example:
    >>> result = run_preprocess(load_config("pipeline_config.yaml"), ["--runner=DirectRunner"])
    >>> result.dataset_dir, result.skipped
    ('work/data/3f9c...', False)
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
import uuid

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.config import PipelineConfig
from pipeline.constants import (
    DATASET_FORMAT_VERSION, SPLITS, STATS_FILE, TOKENIZER_FILE, VOCAB_FILE,
)
from pipeline.corpus import InputFile, dataset_fingerprint, resolve_inputs
from pipeline.errors import InputDataError
from pipeline.reading import COUNTS_TAG, ReadCorpus
from pipeline.split_stats import SumStatsFn, finish_split_stats, to_json_record
from pipeline.tokenize_fn import STATS_TAG, TokenizeFn
from pipeline.tokenizer import read_vocab, vocab_file_text
from pipeline.vocabulary import LearnVocabulary, spec_of

_SPLIT_STATS = "_split_stats"


@dataclasses.dataclass(frozen=True)
class PreprocessResult:
    dataset_dir: str
    fingerprint: str
    skipped: bool
    stats: dict


def dataset_dir_for(config: PipelineConfig) -> tuple[str, list[InputFile], str]:
    """(dataset folder, input files, fingerprint) that `config` describes."""
    if config.data.is_pairs:
        from pipeline.pairs_preprocess import pair_dataset_dir_for  # imports this module

        return pair_dataset_dir_for(config)
    files = resolve_inputs(config.data, config.preprocess.output_dir)
    fingerprint = dataset_fingerprint(files, config)
    return os.path.join(config.preprocess.output_dir, fingerprint[:16]), files, fingerprint


def create_pipeline(p: beam.Pipeline, files: list[InputFile], config: PipelineConfig, out_dir: str) -> None:
    """Adds every step that writes one dataset into `out_dir` (which must exist)."""
    data, pre, tok = config.data, config.preprocess, config.tokenizer

    def batches(chunks, label):
        return chunks | label >> beam.BatchElements(
            min_batch_size=pre.batch_lines, max_batch_size=pre.batch_lines,
            element_size_fn=lambda chunk: max(len(chunk.lines), 1))

    # Read twice: once to learn the vocabulary, once to encode. The second read streams
    # through the encoder after the vocabulary is ready, so no runner holds the corpus.
    for_vocab = (
        p | "ListFilesForVocab" >> beam.Create(files)
        | "ReadForVocab" >> ReadCorpus(data, pre))
    vocab = (
        batches(for_vocab.chunks | "OnlyTrain" >> beam.Filter(lambda c: c.split == "train"),
                "BatchForVocab")
        | "LearnVocabulary" >> LearnVocabulary(tok))
    corpus = (
        p | "ListFilesForRecords" >> beam.Create(files)
        | "ReadForRecords" >> ReadCorpus(data, pre))
    encoded = batches(corpus.chunks, "BatchForEncoding") | "Encode" >> beam.ParDo(
        TokenizeFn(spec_of(tok)), vocab=beam.pvalue.AsSingleton(vocab)
    ).with_outputs(*SPLITS, STATS_TAG)
    write_splits(encoded, encoded[STATS_TAG], corpus[COUNTS_TAG], out_dir, pre.num_shards, to_json_record)
    _ = (
        vocab
        | "VocabText" >> beam.Map(lambda v: vocab_file_text(v)[:-1])
        | "WriteVocab" >> beam.io.WriteToText(
            os.path.join(out_dir, VOCAB_FILE), num_shards=1, shard_name_template=""))


def write_splits(encoded, stats, counts, out_dir: str, num_shards: int, to_record) -> None:
    """Writes each split's serialized records (`encoded[split]`) as GZIP TFRecord shards,
    and the per-split sums of `stats` and `counts` partials as JSON lines (`to_record`
    turns a split's summed accumulator into a dict) for the launcher to finish."""
    for split in SPLITS:
        _ = encoded[split] | f"Write{split.title()}" >> beam.io.WriteToTFRecord(
            os.path.join(out_dir, split), file_name_suffix=".tfrecord.gz",
            num_shards=num_shards, compression_type=CompressionTypes.GZIP)
    _ = (
        (stats, counts)
        | "AllStats" >> beam.Flatten()
        | "SumStats" >> beam.CombinePerKey(SumStatsFn())
        | "StatsToJson" >> beam.MapTuple(lambda split, acc: json.dumps(to_record(split, acc)))
        | "WriteStats" >> beam.io.WriteToText(
            os.path.join(out_dir, _SPLIT_STATS), file_name_suffix=".jsonl"))


def run_preprocess(config: PipelineConfig, beam_args: list[str] | None = None) -> PreprocessResult:
    """Preprocesses the corpus of `config` unless an identical dataset exists.

    Args:
        config: the whole pipeline config (data, tokenizer, preprocess sections used).
        beam_args: Beam pipeline options (`--runner`, `--direct_num_workers`, ...).
    Raises:
        InputDataError: bad or empty corpus; nothing is left under the final name.
    """
    if config.data.is_pairs:  # text pairs: see pipeline.pairs_preprocess
        from pipeline.pairs_preprocess import run_pairs_preprocess  # imports this module

        return run_pairs_preprocess(config, beam_args)
    final_dir, files, fingerprint = dataset_dir_for(config)

    def build(tmp_dir: str) -> dict:
        started = time.time()
        with beam.Pipeline(options=PipelineOptions(beam_args or [])) as p:
            create_pipeline(p, files, config, tmp_dir)
        stats = _write_metadata(tmp_dir, files, config, fingerprint, time.time() - started)
        _check_splits(stats, config)
        return stats

    return build_dataset(config.preprocess.output_dir, final_dir, fingerprint, build)


def build_dataset(output_dir: str, final_dir: str, fingerprint: str, build) -> PreprocessResult:
    """The dataset folder contract: `final_dir` if it is complete (it has stats.json);
    else `build(tmp_dir) -> stats` writes everything into a temporary folder, which is
    renamed to `final_dir` only when `build` returns, and deleted whatever happens."""
    stats_path = os.path.join(final_dir, STATS_FILE)
    if FileSystems.exists(stats_path):
        with FileSystems.open(stats_path) as f:
            return PreprocessResult(final_dir, fingerprint, True, json.load(f))
    tmp_dir = os.path.join(output_dir, f".tmp-{fingerprint[:16]}-{uuid.uuid4().hex[:8]}")
    FileSystems.mkdirs(tmp_dir)
    try:
        stats = build(tmp_dir)
        _publish(tmp_dir, final_dir)
    finally:
        if FileSystems.exists(tmp_dir):
            FileSystems.delete([tmp_dir])
    return PreprocessResult(final_dir, fingerprint, False, stats)


def _write_metadata(out_dir, files, config, fingerprint, seconds) -> dict:
    vocab = read_vocab(os.path.join(out_dir, VOCAB_FILE))
    records = {}
    pattern = os.path.join(out_dir, _SPLIT_STATS + "*")
    for meta in FileSystems.match([pattern])[0].metadata_list:
        with FileSystems.open(meta.path) as f:
            for line in f.read().decode().splitlines():
                record = json.loads(line)
                records[record["split"]] = record
        FileSystems.delete([meta.path])
    empty = to_json_record("", {})
    stats = {
        "fingerprint": fingerprint,
        "format_version": DATASET_FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(seconds, 2),
        "tokenizer": config.tokenizer.kind,
        "vocab_size": len(vocab),
        "splits": {s: finish_split_stats(records.get(s, empty), len(vocab)) for s in SPLITS},
        "inputs": [dataclasses.asdict(f) for f in files],
        "config": {k: getattr(config, k).model_dump(mode="json") for k in ("data", "tokenizer", "preprocess")},
    }
    _write_text(os.path.join(out_dir, TOKENIZER_FILE), spec_of(config.tokenizer).to_json(len(vocab)))
    _write_text(os.path.join(out_dir, STATS_FILE), json.dumps(stats, indent=2) + "\n")  # last
    return stats


def _check_splits(stats: dict, config: PipelineConfig) -> None:
    splits = stats["splits"]
    if all(splits[s]["tokens"] == 0 for s in SPLITS):
        raise InputDataError(
            "the corpus holds no text: every line was empty or unreadable "
            f"(inputs: {', '.join(i['path'] for i in stats['inputs'][:3])})")
    hashed = not config.data.valid or not config.data.test
    for split in SPLITS:
        if splits[split]["tokens"]:
            continue
        if split != "train" and getattr(config.data, split):
            raise InputDataError(f"the {split} split is empty: data.{split} holds no text")
        source = ("data.train" if not hashed else "data.train after the hash split"
                  if split == "train" else f"the {split}_fraction share of data.train")
        hint = ("" if not hashed else
                "; give more documents, change the fractions, use data.format: lines, "
                "or give data.valid and data.test their own files")
        raise InputDataError(f"the {split} split is empty: {source} holds no text{hint}")


def _publish(tmp_dir: str, final_dir: str) -> None:
    """Moves a complete dataset into place; a concurrent identical run may have won."""
    if FileSystems.exists(os.path.join(final_dir, STATS_FILE)):
        return
    if "://" not in tmp_dir:
        try:
            os.rename(tmp_dir, final_dir)
        except OSError:
            shutil.rmtree(final_dir, ignore_errors=True)  # a crashed publish; never readable
            os.rename(tmp_dir, final_dir)
        return
    # Object stores have no atomic folder rename: move the files, stats.json last, which
    # readers take as the mark of a complete dataset.
    names = [m.path for m in FileSystems.match([tmp_dir.rstrip("/") + "/*"])[0].metadata_list]
    names.sort(key=lambda path: path.endswith(STATS_FILE))
    for path in names:
        FileSystems.rename([path], [os.path.join(final_dir, os.path.basename(path))])


def _write_text(path: str, text: str) -> None:
    with FileSystems.create(path) as f:
        f.write(text.encode("utf-8"))
