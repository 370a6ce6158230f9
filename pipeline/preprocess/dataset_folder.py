"""The dataset folder contract, one for documents and for pairs: a fingerprinted folder
under `preprocess.output_dir`, written under a temporary name and renamed into place only
when complete (`stats.json`, written last, marks it complete), and the steps both
pipelines share to fill it.

    <preprocess.output_dir>/<fingerprint[:16]>/
        train-*.tfrecord.gz, valid-*, test-*   GZIP TFRecord shards (pipeline/core/records.py,
                                               pipeline/core/pair_records.py)
        vocab.txt, tokenizer.json              (pairs without a shared vocabulary: source_ and
                                               target_ prefixed)
        stats.json                             counts per split, inputs, config; last

Example:
    >>> build_dataset("work/data", "work/data/3f9c", fingerprint, build=lambda tmp: {...})
    PreprocessResult(dataset_dir='work/data/3f9c', fingerprint='3f9c...', skipped=False, stats={...})
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
import uuid
from typing import Callable

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipeline.core.constants import DATASET_FORMAT_VERSION, SPLITS, STATS_FILE
from pipeline.core.errors import InputDataError
from pipeline.preprocess.split_stats import SumStatsFn

SPLIT_STATS = "_split_stats"  # the pipeline's per-split sums (JSON lines), read then deleted


@dataclasses.dataclass(frozen=True)
class PreprocessResult:
    """A dataset folder, its fingerprint, whether it already existed (skipped), and its
    stats.json. Example: `run_preprocess(config).dataset_dir` -> "work/data/3f9c..."."""

    dataset_dir: str
    fingerprint: str
    skipped: bool
    stats: dict


def batch_elements(pcoll, label: str, size: int, element_size_fn=None):
    """`pcoll` in lists of about `size` (elements sized by `element_size_fn`, default 1)."""
    sizing = {} if element_size_fn is None else {"element_size_fn": element_size_fn}
    return pcoll | label >> beam.BatchElements(min_batch_size=size, max_batch_size=size, **sizing)


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
            os.path.join(out_dir, SPLIT_STATS), file_name_suffix=".jsonl"))


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
        publish(tmp_dir, final_dir)
    finally:
        if FileSystems.exists(tmp_dir):
            FileSystems.delete([tmp_dir])
    return PreprocessResult(final_dir, fingerprint, False, stats)


def read_json_lines(out_dir: str, prefix: str) -> list[dict]:
    """The JSON lines of the `prefix*` files the pipeline wrote in `out_dir`, which are then
    deleted (they are not part of the dataset)."""
    records = []
    for meta in FileSystems.match([os.path.join(out_dir, prefix + "*")])[0].metadata_list:
        with FileSystems.open(meta.path) as f:
            records.extend(json.loads(line) for line in f.read().decode().splitlines())
        FileSystems.delete([meta.path])
    return records


def check_splits(splits: dict, unit: str, nothing: str, empty_split: Callable[[str], str]) -> None:
    """Raises InputDataError unless every split of `splits` (stats.json's) counts some `unit`
    ("tokens", "pairs"): with `nothing` when no split does, else with `empty_split(split)`
    for the first empty one, in SPLITS order.

    Example:
        >>> check_splits({"train": {"tokens": 9}, "valid": {"tokens": 0}, "test": {"tokens": 2}},
        ...              "tokens", "no text", lambda s: f"the {s} split is empty")
        Traceback (most recent call last):
        pipeline.core.errors.InputDataError: the valid split is empty
    """
    if all(splits[s][unit] == 0 for s in SPLITS):
        raise InputDataError(nothing)
    for split in SPLITS:
        if not splits[split][unit]:
            raise InputDataError(empty_split(split))


def stats_header(fingerprint: str, seconds: float) -> dict:
    """The first keys of every stats.json: fingerprint, format version, creation time, seconds."""
    return {"fingerprint": fingerprint, "format_version": DATASET_FORMAT_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "seconds": round(seconds, 2)}


def stats_footer(inputs: list[dict], config) -> dict:
    """The last keys of every stats.json: the inputs and the config sections that made it."""
    return {"inputs": inputs,
            "config": {k: getattr(config, k).model_dump(mode="json") for k in ("data", "tokenizer", "preprocess")}}


def publish(tmp_dir: str, final_dir: str) -> None:
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


def write_text(path: str, text: str) -> None:
    """Writes UTF-8 `text` to `path` through Beam's FileSystems (local or gs:// alike)."""
    with FileSystems.create(path) as f:
        f.write(text.encode("utf-8"))
