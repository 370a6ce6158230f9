"""Reads corpus files into records-to-be (`Chunk`s) with Beam, block by block.

Large files are cut into byte blocks that workers read in parallel; a block owns the
lines that start inside it (the rule of Beam's own text source), so every line is read
exactly once. Each chunk remembers its document key and byte offset, so document order
survives any runner. Bad bytes are replaced and counted, never fatal.

Example (inside a pipeline):
    chunks = files | 'ReadCorpus' >> ReadCorpus(data_config, preprocess_config)
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
from typing import Iterator

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from pipeline.core.config import DataConfig, PreprocessConfig
from pipeline.preprocess.corpus import AUTO_SPLIT, InputFile
from pipeline.preprocess.split_stats import COUNTS_TAG

BLOCK_BYTES = 4 << 20  # a worker's unit of reading
_MAX_RECORD_CHARS = 1 << 20  # a record of a `text` document holds at most this much text


@dataclasses.dataclass
class Chunk:
    """Consecutive lines of one document, to become one record.

    `eos_after[i]` is False for the leading pieces of a line that was cut because it
    exceeded `preprocess.max_line_chars`, so only the line's last piece gets <eos>.
    """

    split: str
    doc: bytes
    offset: int
    first: bool
    lines: list[str]
    eos_after: list[bool]


def split_of(doc: bytes, role: str, valid_fraction: float, test_fraction: float) -> str:
    """The split of a document: its file's role, or a stable hash split for AUTO_SPLIT."""
    if role != AUTO_SPLIT:
        return role
    u = int(doc[:13], 16) / 16**13
    if u < valid_fraction:
        return "valid"
    if u < valid_fraction + test_fraction:
        return "test"
    return "train"


def cut_long_line(line: str, max_chars: int) -> list[str]:
    """Pieces of at most `max_chars`, cut before a whitespace where one exists.

    >>> cut_long_line("aaa bbb ccc", 5)
    ['aaa', ' bbb', ' ccc']
    """
    pieces = []
    while len(line) > max_chars:
        cut = line.rfind(" ", 1, max_chars + 1)
        cut = cut if cut > 0 else max_chars
        pieces.append(line[:cut])
        line = line[cut:]
    pieces.append(line)
    return pieces


def blocks_of(file: InputFile, block_bytes: int = BLOCK_BYTES) -> Iterator[tuple[InputFile, int, int]]:
    """(file, start, end) byte ranges; a compressed file is one range (it cannot seek)."""
    if CompressionTypes.detect_compression_type(file.path) != CompressionTypes.UNCOMPRESSED:
        yield file, 0, -1
        return
    for start in range(0, max(file.size, 1), block_bytes):
        yield file, start, min(start + block_bytes, file.size)


class ReadBlockFn(beam.DoFn):
    """(file, start, end) -> Chunks of the lines starting in [start, end).

    A second output, COUNTS_TAG, carries (split, {counter: n}) for the data issues met.
    """

    def __init__(self, data: DataConfig, preprocess: PreprocessConfig) -> None:
        self._data = data
        self._pre = preprocess
        self._valid_fraction = 0.0 if data.valid else data.valid_fraction
        self._test_fraction = 0.0 if data.test else data.test_fraction
        self._metrics = {}

    def _count(self, counts, split: str, name: str, n: int = 1) -> None:
        counts[split][name] += n
        if name not in self._metrics:
            self._metrics[name] = Metrics.counter("lmpipe", name)
        self._metrics[name].inc(n)

    def process(self, block: tuple[InputFile, int, int]):
        """(file, start, end) -> the `Chunk`s of the lines that start in the block (each with its
        split), in batches; data issues counted on COUNTS_TAG.
        """
        file, start, end = block
        counts = collections.defaultdict(collections.Counter)
        per_line = self._data.format != "text"
        file_doc = file.sha256[:16].encode()
        file_split = split_of(file_doc, file.role, self._valid_fraction, self._test_fraction)
        pending: Chunk | None = None
        chars = 0
        started = start > 0  # a document's first record is in the block at offset 0
        for offset, raw in _lines_in_block(file, start, end):
            text = _decode(raw)
            invalid = text is None
            if invalid:
                text = raw.decode("utf-8", errors="replace")
            if per_line:
                doc = hashlib.sha256(f"{file.sha256}:{offset}".encode()).hexdigest()[:16].encode()
                split = split_of(doc, file.role, self._valid_fraction, self._test_fraction)
                if invalid:
                    self._count(counts, split, "invalid_utf8_lines")
                lines = self._document_lines(text, split, counts)
                chunk = Chunk(split, doc, offset, True, [], [])
                for line in lines:
                    self._add_line(chunk, line, split, counts)
                if chunk.lines:
                    yield chunk
                continue
            if invalid:
                self._count(counts, file_split, "invalid_utf8_lines")
            if self._pre.drop_empty_lines and not text.strip():
                self._count(counts, file_split, "empty_lines_dropped")
                continue
            if pending is None:
                pending = Chunk(file_split, file_doc, offset, not started, [], [])
                started = True
                chars = 0
            self._add_line(pending, text, file_split, counts)
            chars += len(text)
            if len(pending.lines) >= self._pre.max_lines_per_record or chars >= _MAX_RECORD_CHARS:
                yield pending
                pending = None
        if pending is not None:
            yield pending
        for split, values in counts.items():
            yield beam.pvalue.TaggedOutput(COUNTS_TAG, (split, dict(values)))

    def _document_lines(self, text: str, split: str, counts) -> list[str]:
        if self._data.format == "lines":
            lines = [text]
        else:
            try:
                record = json.loads(text)
                value = record[self._data.text_field]
                if not isinstance(value, str):
                    raise TypeError
            except (ValueError, KeyError, TypeError):
                self._count(counts, split, "bad_records")
                return []
            lines = value.split("\n")
        if self._pre.drop_empty_lines:
            kept = [line for line in lines if line.strip()]
            if len(kept) < len(lines):
                self._count(counts, split, "empty_lines_dropped", len(lines) - len(kept))
            lines = kept
        return lines

    def _add_line(self, chunk: Chunk, line: str, split: str, counts) -> None:
        pieces = cut_long_line(line, self._pre.max_line_chars)
        if len(pieces) > 1:
            self._count(counts, split, "long_lines_split")
        chunk.lines.extend(pieces)
        chunk.eos_after.extend([False] * (len(pieces) - 1) + [True])


def _decode(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _lines_in_block(file: InputFile, start: int, end: int) -> Iterator[tuple[int, bytes]]:
    """(byte offset, line without its newline) of each line that starts in [start, end)."""
    compression = (
        CompressionTypes.AUTO if end < 0 else CompressionTypes.UNCOMPRESSED
    )
    with FileSystems.open(file.path, compression_type=compression) as f:
        pos = start
        if start > 0:
            f.seek(start - 1)
            pos = start - 1 + len(f.readline())  # the line in progress belongs to the block before
        while end < 0 or pos < end:
            raw = f.readline()
            if not raw:
                return
            offset, pos = pos, pos + len(raw)
            if raw.endswith(b"\n"):
                raw = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
            yield offset, raw


@beam.ptransform_fn
def ReadCorpus(files, data: DataConfig, preprocess: PreprocessConfig):  # noqa: N802 (Beam style)
    """PCollection[InputFile] -> tagged outputs: chunks (main) and COUNTS_TAG."""
    return (
        files
        | "CutIntoBlocks" >> beam.FlatMap(blocks_of)
        | "SpreadBlocks" >> beam.Reshuffle()
        | "ReadBlocks" >> beam.ParDo(ReadBlockFn(data, preprocess)).with_outputs(
            COUNTS_TAG, main="chunks")
    )
