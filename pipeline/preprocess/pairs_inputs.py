"""Finds the files of a pair dataset, checks them and fingerprints them with the config.

Runs in the launcher, before Beam, like `pipeline.preprocess.corpus` does for documents: a missing
path, an empty glob, a binary file, unequal numbers of source and target files or a
tsv header without the named columns stop with one clear line.

Example:
    >>> files = resolve_pair_inputs(DataConfig(format="pairs", source_train="a.en",
    ...                                        target_train="a.de"), "work/data")
    >>> [(f.role, f.side, f.index) for f in files]
    [('train+split', 'source', 0), ('train+split', 'target', 0)]
"""

from __future__ import annotations

import dataclasses

from apache_beam.io.filesystems import FileSystems

from pipeline.core.config import DataConfig, PipelineConfig
from pipeline.core.constants import SPLITS
from pipeline.core.errors import InputDataError
from pipeline.preprocess.corpus import AUTO_SPLIT, InputFile, _expand, _inspect, dataset_fingerprint

BOTH = "both"  # side of a file that holds whole pairs (pairs_tsv, pairs_jsonl)


@dataclasses.dataclass(frozen=True)
class PairInput:
    """One input file of a pair dataset.

    role: `train`, `valid`, `test` or AUTO_SPLIT (train pairs to hash-split).
    side: `source`, `target` or BOTH. index: position among the sorted files of its
    split and side (the k-th source file pairs with the k-th target file).
    columns: pairs_tsv, (source, target) column indices; header: the first line names
    the columns and is not a pair.
    """

    path: str
    size: int
    sha256: str
    role: str
    side: str
    index: int
    columns: tuple[int, int] | None = None
    header: bool = False

    @property
    def key(self) -> str:
        """`<role>/<side>/<index>`: this file's key in line counts and block sizes."""
        return f"{self.role}/{self.side}/{self.index}"


def resolve_pair_inputs(data: DataConfig, work_dir: str) -> list[PairInput]:
    """Every input file with its role, side, size and hash; raises InputDataError."""
    auto = not data.has_own("valid") or not data.has_own("test")
    roles = {"train": AUTO_SPLIT if auto else "train", "valid": "valid", "test": "test"}
    files: list[PairInput] = []
    for split in SPLITS:
        sides = ("source", "target") if data.format == "pairs" else (BOTH,)
        found = {}
        for side in sides:
            key = f"data.{side}_{split}" if side != BOTH else f"data.{split}"
            globs = getattr(data, key.removeprefix("data."))
            found[side] = (key, sorted({p for g in globs for p in _expand(g, key, work_dir)}))
        if data.format == "pairs":
            (skey, sources), (tkey, targets) = found["source"], found["target"]
            if len(sources) != len(targets):
                raise InputDataError(
                    f"{skey} matches {len(sources)} files but {tkey} matches {len(targets)}; "
                    "the k-th source file (sorted by path) pairs with the k-th target file, "
                    "so both globs need the same number of files")
        for side, (key, paths) in found.items():
            for index, path in enumerate(paths):
                f = _inspect(path, roles[split], key)
                files.append(PairInput(f.path, f.size, f.sha256, f.role, side, index))
    _check_each_file_in_one_split(files)
    if data.format == "pairs_tsv":
        files = [_with_columns(f, data) for f in files]
    return files


def pair_fingerprint(files: list[PairInput], config: PipelineConfig) -> str:
    """The dataset fingerprint; a file's side and pairing are part of its role."""
    return dataset_fingerprint(
        [InputFile(f.path, f.size, f.sha256, f.key) for f in files], config)


def _check_each_file_in_one_split(files: list[PairInput]) -> None:
    seen: dict[tuple[str, str], str] = {}
    for f in files:
        split = "train" if f.role == AUTO_SPLIT else f.role
        other = seen.setdefault((f.side, f.path), split)
        if other != split:
            raise InputDataError(
                f"{f.path} is listed in both the {other} and the {split} files of the "
                f"{f.side} side; a file may feed only one split")


def _with_columns(f: PairInput, data: DataConfig) -> PairInput:
    fields = data.pair_fields()
    if all(isinstance(x, int) for x in fields):
        return dataclasses.replace(f, columns=fields)
    with FileSystems.open(f.path) as stream:
        header = stream.readline().decode("utf-8", errors="replace").rstrip("\r\n").split("\t")
    columns = []
    for side, field in zip(("source", "target"), fields):
        if isinstance(field, int):
            columns.append(field)
        elif field in header:
            columns.append(header.index(field))
        else:
            raise InputDataError(
                f"data.{side}_field = {field!r}: the header line of {f.path} has no such "
                f"column (it has: {', '.join(repr(h) for h in header)}); name a column "
                "of the header, or give a 0-based column index for files without one")
    return dataclasses.replace(f, columns=tuple(columns), header=True)
