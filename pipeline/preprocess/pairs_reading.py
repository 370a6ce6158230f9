"""Reads pair files into `Pair`s with Beam: byte blocks read in parallel, lines numbered
exactly, line-aligned files joined by line number.

Each block is read once (`pipeline.preprocess.reading`'s rule: a block owns the lines that start in
it) and reports how many lines it holds; a line's number is its index in the block plus
the lines of the file's earlier blocks (a side input of block sizes, one number a
block). `pairs` files are then joined by (split, file pair, line number); a line
without its partner only happens when the files' line counts differ, which the
launcher turns into an error from LINES_TAG (per-file line counts).

Example (inside a pipeline):
    read = files | 'ReadPairs' >> ReadPairs(files_list, data_config, max_chars=1_000_000)
    read.pairs, read[COUNTS_TAG], read[LINES_TAG]
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json

import apache_beam as beam

from pipeline.core.config import DataConfig
from pipeline.preprocess.pairs_inputs import PairInput
from pipeline.preprocess.reading import BLOCK_BYTES, _decode, _lines_in_block, blocks_of, split_of
from pipeline.preprocess.split_stats import COUNTS_TAG, split_partials

LINES_TAG = "lines"  # (file key, number of lines)
_BLOCK_SIZES = "block_sizes"


@dataclasses.dataclass
class Pair:
    """One pair of texts, its split and its position in the input."""

    split: str
    pair: int
    source: str
    target: str


class ReadLinesFn(beam.DoFn):
    """(file, start, end) -> (file, start, [raw lines]); its size on _BLOCK_SIZES."""

    def process(self, block):
        """(file, start, end) -> (file, start, the lines of the block), a header line skipped; the
        block's line count on _BLOCK_SIZES.
        """
        file, start, end = block
        lines = [raw for offset, raw in _lines_in_block(file, start, end)
                 if not (file.header and offset == 0)]
        yield beam.pvalue.TaggedOutput(_BLOCK_SIZES, ((file.key, start), len(lines)))
        yield file, start, lines


class NumberLinesFn(beam.DoFn):
    """(file, start, lines) -> (file key, line number, pair ordinal, raw line) per line."""

    def __init__(self, files: list[PairInput]) -> None:
        self._files = files

    def process(self, block, sizes: dict):
        """(file, start, lines) -> ((role, index, line number), (key, ordinal, raw)) per line,
        numbered across the blocks and earlier files of its role and side (`sizes`: every block's
        line count).
        """
        file, start, lines = block
        first = sum(n for (key, s), n in sizes.items() if key == file.key and s < start)
        earlier = {f.key for f in self._files
                   if (f.role, f.side) == (file.role, file.side) and f.index < file.index}
        base = sum(n for (key, _), n in sizes.items() if key in earlier)
        for i, raw in enumerate(lines):
            yield file.key, first + i, base + first + i, raw


class ParsePairFn(beam.DoFn):
    """Numbered lines -> Pairs. `pairs`: grouped (source, target) lines of one line
    number; pairs_tsv / pairs_jsonl: one line. Issues go to COUNTS_TAG per split."""

    def __init__(self, files: list[PairInput], data: DataConfig, max_chars: int) -> None:
        self._files = {f.key: f for f in files}
        self._data = data
        self._max_chars = max_chars
        self._valid_fraction = 0.0 if data.has_own("valid") else data.valid_fraction
        self._test_fraction = 0.0 if data.has_own("test") else data.test_fraction
        self._counts = {}

    def start_bundle(self) -> None:
        """Starts the bundle's data-issue counts empty."""
        self._counts = collections.defaultdict(collections.Counter)

    def process(self, element):
        """One pair's lines (line-aligned files) or one TSV / JSONL line -> a `Pair` with its split;
        unreadable or empty lines are counted, not emitted.
        """
        if self._data.format == "pairs":
            (_, _, line), sides = element
            by_side = {self._files[key].side: (self._files[key], ordinal, raw)
                       for key, ordinal, raw in sides}
            if len(by_side) != 2:  # only when line counts differ: the launcher stops
                file = next(iter(by_side.values()))[0]
                self._counts[self._split(file.sha256, file.role, line)]["skipped_unpaired"] += 1
                return
            (source, ordinal, src_raw), (target, _, tgt_raw) = by_side["source"], by_side["target"]
            split = self._split(f"{source.sha256}:{target.sha256}", source.role, line)
            counts = self._counts[split]
            texts = self._text(src_raw, counts), self._text(tgt_raw, counts)
        else:
            key, line, ordinal, raw = element
            file = self._files[key]
            split = self._split(file.sha256, file.role, line)
            counts = self._counts[split]
            texts = self._fields(file, self._text(raw, counts))
        counts["pairs_read"] += 1
        if texts is None:
            counts["skipped_bad_records"] += 1
        elif not texts[0].strip() or not texts[1].strip():
            counts["skipped_empty"] += 1
        elif max(len(texts[0]), len(texts[1])) > self._max_chars:
            counts["skipped_too_long"] += 1
        else:
            yield Pair(split, ordinal, texts[0], texts[1])

    def finish_bundle(self):
        """The bundle's data-issue counts, one (split, counts) per split, on COUNTS_TAG."""
        yield from split_partials(COUNTS_TAG, self._counts)
        self._counts = collections.defaultdict(collections.Counter)

    def _split(self, key: str, role: str, line: int) -> str:
        doc = hashlib.sha256(f"{key}:{line}".encode()).hexdigest()[:16].encode()
        return split_of(doc, role, self._valid_fraction, self._test_fraction)

    @staticmethod
    def _text(raw: bytes, counts) -> str:
        text = _decode(raw)
        if text is None:
            counts["invalid_utf8_lines"] += 1
            text = raw.decode("utf-8", errors="replace")
        return text

    def _fields(self, file: PairInput, text: str) -> tuple[str, str] | None:
        if self._data.format == "pairs_tsv":
            cells = text.split("\t")
            if max(file.columns) >= len(cells):
                return None
            return cells[file.columns[0]], cells[file.columns[1]]
        try:
            record = json.loads(text)
            values = tuple(record[name] for name in self._data.pair_fields())
        except (ValueError, KeyError, TypeError):
            return None
        return values if all(isinstance(v, str) for v in values) else None


@beam.ptransform_fn
def ReadPairs(files, file_list: list[PairInput], data: DataConfig, max_chars: int,  # noqa: N802
              block_bytes: int = BLOCK_BYTES):
    """PCollection[PairInput] -> {"pairs": Pair, COUNTS_TAG: ..., LINES_TAG: ...}.

    A pair with a side longer than `max_chars` characters is skipped (skipped_too_long):
    a pair cannot be cut like a document line.
    """
    blocks = (
        files
        | "CutIntoBlocks" >> beam.FlatMap(blocks_of, block_bytes)
        | "SpreadBlocks" >> beam.Reshuffle()
        | "ReadBlocks" >> beam.ParDo(ReadLinesFn()).with_outputs(_BLOCK_SIZES, main="blocks"))
    sizes = blocks[_BLOCK_SIZES]
    lines = blocks.blocks | "NumberLines" >> beam.ParDo(
        NumberLinesFn(file_list), sizes=beam.pvalue.AsDict(sizes))
    if data.format == "pairs":
        lines = (
            lines
            | "KeyByLine" >> beam.Map(
                lambda line, roles: (roles[line[0]] + (line[1],), (line[0], line[2], line[3])),
                {f.key: (f.role, f.index) for f in file_list})
            | "JoinSides" >> beam.GroupByKey())
    parsed = lines | "ParsePairs" >> beam.ParDo(ParsePairFn(file_list, data, max_chars)).with_outputs(
        COUNTS_TAG, main="pairs")
    line_counts = (
        sizes
        | "LinesPerFile" >> beam.MapTuple(lambda block, n: (block[0], n))
        | "SumLinesPerFile" >> beam.CombinePerKey(sum))
    return {"pairs": parsed.pairs, COUNTS_TAG: parsed[COUNTS_TAG], LINES_TAG: line_counts}
