"""The Beam pipeline of documents: corpus files -> TFRecords, vocab, tokenizer and stats.

`create_pipeline` is pure (it only adds steps to a Pipeline); `run_documents_preprocess`
resolves the inputs, skips work already done (same fingerprint) and fills the dataset
folder (`pipeline.preprocess.dataset_folder`). `pipeline.preprocess.run` chooses this or the pairs
pipeline from `data.format`.

Example:
    >>> result = run_documents_preprocess(load_config("pipeline_config.yaml"), ["--runner=DirectRunner"])
    >>> result.dataset_dir, result.skipped
    ('work/data/3f9c...', False)
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.core.config import PipelineConfig
from pipeline.core.constants import SPLITS, STATS_FILE, TOKENIZER_FILE, VOCAB_FILE
from pipeline.core.tokenizer import read_vocab, vocab_file_text
from pipeline.preprocess.corpus import InputFile, dataset_fingerprint, resolve_inputs
from pipeline.preprocess.dataset_folder import (
    SPLIT_STATS, PreprocessResult, batch_elements, build_dataset, check_splits, read_json_lines, stats_footer,
    stats_header, write_splits, write_text,
)
from pipeline.preprocess.reading import ReadCorpus
from pipeline.preprocess.split_stats import COUNTS_TAG, STATS_TAG, finish_split_stats, to_json_record
from pipeline.preprocess.tokenize_fn import TokenizeFn
from pipeline.preprocess.vocabulary import LearnVocabulary, spec_of


def documents_dataset_dir_for(config: PipelineConfig) -> tuple[str, list[InputFile], str]:
    """(dataset folder, input files, fingerprint) that a documents `config` describes."""
    files = resolve_inputs(config.data, config.preprocess.output_dir)
    fingerprint = dataset_fingerprint(files, config)
    return os.path.join(config.preprocess.output_dir, fingerprint[:16]), files, fingerprint


def create_pipeline(p: beam.Pipeline, files: list[InputFile], config: PipelineConfig, out_dir: str) -> None:
    """Adds every step that writes one dataset into `out_dir` (which must exist)."""
    data, pre, tok = config.data, config.preprocess, config.tokenizer

    def batches(chunks, label):
        return batch_elements(chunks, label, pre.batch_lines, lambda chunk: max(len(chunk.lines), 1))

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


def run_documents_preprocess(config: PipelineConfig, beam_args: list[str] | None = None) -> PreprocessResult:
    """Preprocesses the documents of `config` unless an identical dataset exists.

    Args:
        config: the whole pipeline config (data, tokenizer, preprocess sections used).
        beam_args: Beam pipeline options (`--runner`, `--direct_num_workers`, ...).
    Raises:
        InputDataError: bad or empty corpus; nothing is left under the final name.
    """
    final_dir, files, fingerprint = documents_dataset_dir_for(config)

    def build(tmp_dir: str) -> dict:
        started = time.time()
        with beam.Pipeline(options=PipelineOptions(beam_args or [])) as p:
            create_pipeline(p, files, config, tmp_dir)
        stats = _write_metadata(tmp_dir, files, config, fingerprint, time.time() - started)
        _check_splits(stats, config)
        return stats

    return build_dataset(config.preprocess.output_dir, final_dir, fingerprint, build)


def _write_metadata(out_dir, files, config, fingerprint, seconds) -> dict:
    vocab = read_vocab(os.path.join(out_dir, VOCAB_FILE))
    records = {r["split"]: r for r in read_json_lines(out_dir, SPLIT_STATS)}
    empty = to_json_record("", {})
    stats = {
        **stats_header(fingerprint, seconds),
        "tokenizer": config.tokenizer.kind,
        "vocab_size": len(vocab),
        "splits": {s: finish_split_stats(records.get(s, empty), len(vocab)) for s in SPLITS},
        **stats_footer([dataclasses.asdict(f) for f in files], config),
    }
    write_text(os.path.join(out_dir, TOKENIZER_FILE), spec_of(config.tokenizer).to_json(len(vocab)))
    write_text(os.path.join(out_dir, STATS_FILE), json.dumps(stats, indent=2) + "\n")  # last
    return stats


def _check_splits(stats: dict, config: PipelineConfig) -> None:
    hashed = not config.data.valid or not config.data.test

    def empty(split: str) -> str:
        if split != "train" and getattr(config.data, split):
            return f"the {split} split is empty: data.{split} holds no text"
        source = ("data.train" if not hashed else "data.train after the hash split"
                  if split == "train" else f"the {split}_fraction share of data.train")
        hint = ("" if not hashed else
                "; give more documents, change the fractions, use data.format: lines, "
                "or give data.valid and data.test their own files")
        return f"the {split} split is empty: {source} holds no text{hint}"

    check_splits(stats["splits"], "tokens", "the corpus holds no text: every line was empty or unreadable "
                 f"(inputs: {', '.join(i['path'] for i in stats['inputs'][:3])})", empty)
