"""The Beam pipeline of text pairs: pair files -> pair TFRecords, vocab(s), tokenizer(s)
and stats, in the dataset folder contract of documents (a fingerprinted folder,
written under a temporary name and renamed only when complete and checked).

`pipeline.preprocess.run.run_preprocess` hands configs with a pair `data.format` (pairs,
pairs_tsv, pairs_jsonl) to `run_pairs_preprocess`. Records: see `pipeline.core.pair_records`; stats:
see `pipeline.preprocess.pairs_stats`. Vocabularies are learned from the train split's pairs
(every pair with two non-empty sides, long ones included) with the same combiners as
documents: one from both sides (`tokenizer.shared_vocab`) or one per side.

Example:
    >>> cfg = load_config(None, ["data.format=pairs", "data.source_train=train.en",
    ...                          "data.target_train=train.de"])
    >>> run_pairs_preprocess(cfg, ["--runner=DirectRunner"]).stats["splits"]["train"]["pairs"]
    29000
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.core.config import PipelineConfig
from pipeline.core.constants import SPLITS, STATS_FILE
from pipeline.core.errors import InputDataError
from pipeline.core.pair_records import SIDES, tokenizer_file_name, vocab_file_name
from pipeline.core.tokenizer import read_vocab, vocab_file_text
from pipeline.preprocess.dataset_folder import (
    SPLIT_STATS, PreprocessResult, batch_elements, build_dataset, check_splits, read_json_lines, stats_footer,
    stats_header, write_splits, write_text,
)
from pipeline.preprocess.pairs_encode import EncodePairsFn, TextLines, side_specs
from pipeline.preprocess.pairs_inputs import PairInput, pair_fingerprint, resolve_pair_inputs
from pipeline.preprocess.pairs_reading import LINES_TAG, ReadPairs
from pipeline.preprocess.pairs_stats import empty_pair_record, finish_pair_split_stats, to_pair_json_record
from pipeline.preprocess.reading import BLOCK_BYTES
from pipeline.preprocess.split_stats import COUNTS_TAG, STATS_TAG
from pipeline.preprocess.vocabulary import LearnVocabulary, spec_of

_LINE_COUNTS = "_line_counts"


def pair_dataset_dir_for(config: PipelineConfig) -> tuple[str, list[PairInput], str]:
    """(dataset folder, input files, fingerprint) that a pairs `config` describes."""
    files = resolve_pair_inputs(config.data, config.preprocess.output_dir)
    fingerprint = pair_fingerprint(files, config)
    return os.path.join(config.preprocess.output_dir, fingerprint[:16]), files, fingerprint


def create_pairs_pipeline(p: beam.Pipeline, files: list[PairInput], config: PipelineConfig,
                          out_dir: str, block_bytes: int = BLOCK_BYTES) -> None:
    """Adds every step that writes one pair dataset into `out_dir` (which must exist).

    `block_bytes`: the unit of parallel reading (tests make it tiny).
    """
    pre, tok = config.preprocess, config.tokenizer
    shared = tok.shared_vocab
    read = p | "ListFiles" >> beam.Create(files) | "ReadPairs" >> ReadPairs(
        files, config.data, pre.max_line_chars, block_bytes)

    def batches(pairs, label):
        return batch_elements(pairs, label, pre.batch_lines)

    train = batches(read["pairs"] | "OnlyTrain" >> beam.Filter(lambda pair: pair.split == "train"),
                    "BatchForVocab")
    texts = {side: train | f"{side.title()}Texts" >> beam.Map(
        lambda batch, side: [TextLines.of([getattr(pair, side) for pair in batch])], side)
        for side in SIDES}
    if shared:
        vocab = ((texts["source"], texts["target"]) | "BothSides" >> beam.Flatten()
                 | "LearnVocabulary" >> LearnVocabulary(tok))
        vocabs = {"source": vocab, "target": vocab}
    else:
        vocabs = {side: texts[side] | f"Learn{side.title()}Vocabulary" >> LearnVocabulary(tok)
                  for side in SIDES}
    encoded = batches(read["pairs"], "BatchForEncoding") | "Encode" >> beam.ParDo(
        EncodePairsFn(spec_of(tok), pre.max_pair_tokens),
        source_vocab=beam.pvalue.AsSingleton(vocabs["source"]),
        target_vocab=beam.pvalue.AsSingleton(vocabs["target"]),
    ).with_outputs(*SPLITS, STATS_TAG)
    write_splits(encoded, encoded[STATS_TAG], read[COUNTS_TAG], out_dir, pre.num_shards, to_pair_json_record)
    _ = (
        read[LINES_TAG]
        | "LineCountsToJson" >> beam.MapTuple(lambda key, n: json.dumps({"key": key, "lines": n}))
        | "WriteLineCounts" >> beam.io.WriteToText(os.path.join(out_dir, _LINE_COUNTS), file_name_suffix=".jsonl"))
    for side in (("source",) if shared else SIDES):
        _ = (
            vocabs[side]
            | f"{side.title()}VocabText" >> beam.Map(lambda v: vocab_file_text(v)[:-1])
            | f"Write{side.title()}Vocab" >> beam.io.WriteToText(
                os.path.join(out_dir, vocab_file_name(side, shared)), num_shards=1,
                shard_name_template=""))


def run_pairs_preprocess(config: PipelineConfig, beam_args: list[str] | None = None) -> PreprocessResult:
    """Preprocesses the pairs of `config` unless an identical dataset exists.

    Raises:
        InputDataError: bad, empty or misaligned input; nothing is left under the final name.
    """
    final_dir, files, fingerprint = pair_dataset_dir_for(config)

    def build(tmp_dir: str) -> dict:
        started = time.time()
        with beam.Pipeline(options=PipelineOptions(beam_args or [])) as p:
            create_pairs_pipeline(p, files, config, tmp_dir, BLOCK_BYTES)
        lines = read_json_lines(tmp_dir, _LINE_COUNTS)
        _check_alignment(files, {r["key"]: r["lines"] for r in lines})
        stats = _write_metadata(tmp_dir, files, lines, config, fingerprint, time.time() - started)
        _check_splits(stats, config)
        return stats

    return build_dataset(config.preprocess.output_dir, final_dir, fingerprint, build)


def _check_alignment(files: list[PairInput], lines: dict[str, int]) -> None:
    by_pair = {}
    for f in files:
        by_pair.setdefault((f.role, f.index), {})[f.side] = f
    for sides in by_pair.values():
        if "source" not in sides:
            continue
        source, target = sides["source"], sides["target"]
        n, m = lines.get(source.key, 0), lines.get(target.key, 0)
        if n != m:
            raise InputDataError(
                f"misaligned pair files: {source.path} has {n:,} lines but {target.path} has "
                f"{m:,}; line n of a source file pairs with line n of its target file, so "
                "both need the same number of lines (an empty last line counts too)")


def _write_metadata(out_dir, files, lines, config, fingerprint, seconds) -> dict:
    tok, shared = config.tokenizer, config.tokenizer.shared_vocab
    vocab_sizes = {side: len(read_vocab(os.path.join(out_dir, vocab_file_name(side, shared))))
                   for side in SIDES}
    records = {r["split"]: r for r in read_json_lines(out_dir, SPLIT_STATS)}
    line_counts = {r["key"]: r["lines"] for r in lines}
    specs = side_specs(spec_of(tok))
    for side in (("source",) if shared else SIDES):
        body = json.loads(specs[side].to_json(vocab_sizes[side]))
        body["vocab_file"] = vocab_file_name(side, shared)
        write_text(os.path.join(out_dir, tokenizer_file_name(side, shared)), json.dumps(body, indent=2) + "\n")
    stats = {
        **stats_header(fingerprint, seconds),
        "kind": "pairs",
        "format": config.data.format,
        "tokenizer": tok.kind,
        "shared_vocab": shared,
        **({"vocab_size": vocab_sizes["source"]} if shared else {}),
        "vocab": {side: {"size": vocab_sizes[side], "file": vocab_file_name(side, shared),
                         "tokenizer": tokenizer_file_name(side, shared)} for side in SIDES},
        "eos": {side: specs[side].add_eos for side in SIDES},
        "max_pair_tokens": config.preprocess.max_pair_tokens,
        "splits": {s: finish_pair_split_stats(records.get(s, empty_pair_record(s)), vocab_sizes)
                   for s in SPLITS},
        **stats_footer([dataclasses.asdict(f) | {"lines": line_counts.get(f.key, 0)} for f in files], config),
    }
    write_text(os.path.join(out_dir, STATS_FILE), json.dumps(stats, indent=2) + "\n")  # last
    return stats


def _check_splits(stats: dict, config: PipelineConfig) -> None:
    splits = stats["splits"]
    skipped = {k: sum(splits[s][k] for s in SPLITS) for k in splits["train"] if k.startswith("skipped_")}
    reasons = ", ".join(f"{k.removeprefix('skipped_')}: {v:,}" for k, v in skipped.items() if v)

    def empty(split: str) -> str:
        own = split != "train" and config.data.has_own(split)
        where = ("its own files hold no usable pair" if own else
                 "data.train holds no usable pair after the hash split" if split == "train" else
                 f"the {split}_fraction share of the train pairs is empty; give more pairs, "
                 f"raise data.{split}_fraction or give the {split} split its own files")
        return f"the {split} split is empty: {where}"

    check_splits(splits, "pairs", "the input holds no usable pair" + (f" (skipped: {reasons})" if reasons else "")
                 + f"; inputs: {', '.join(i['path'] for i in stats['inputs'][:4])}", empty)
