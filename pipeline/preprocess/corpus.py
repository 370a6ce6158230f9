"""Finds the corpus files of each split, checks them, and fingerprints them with the config.

Runs in the launcher, before the Beam pipeline, so that a missing path, an empty glob or
a binary file stops with one clear line instead of a worker's traceback. Uses Beam's
`FileSystems`, so any filesystem Beam supports (local, gs://, s3://, hdfs://) works.

Example:
    >>> files = resolve_inputs(DataConfig(train=["corpus/*.txt"]), "work/data")
    >>> files[0].role, len(files[0].sha256)
    ('train+split', 64)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipeline.core.config import DataConfig, PipelineConfig
from pipeline.core.constants import DATASET_FORMAT_VERSION
from pipeline.core.errors import InputDataError

BUILTIN_PREFIX = "builtin:"
BUILTIN_CORPORA = ("python-docs",)
AUTO_SPLIT = "train+split"  # role of train files whose documents are hash-split
_SNIFF_BYTES = 8192
_HASH_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class InputFile:
    """One corpus file and the split it feeds (`train`, `valid`, `test` or AUTO_SPLIT)."""

    path: str
    size: int
    sha256: str
    role: str


def resolve_inputs(data: DataConfig, work_dir: str) -> list[InputFile]:
    """Every input file with its role, size and content hash; raises InputDataError.

    Args:
        data: the `data` config section.
        work_dir: where built-in corpora are written as files (under `_builtin/`).
    """
    auto = not data.valid or not data.test
    roles = {"train": AUTO_SPLIT if auto else "train", "valid": "valid", "test": "test"}
    files: list[InputFile] = []
    seen: dict[str, str] = {}
    for split in ("train", "valid", "test"):
        for pattern in getattr(data, split):
            for path in _expand(pattern, f"data.{split}", work_dir):
                if path in seen:
                    raise InputDataError(
                        f"{path} is listed in both data.{seen[path]} and data.{split}; "
                        "a file may feed only one split"
                    )
                seen[path] = split
                files.append(_inspect(path, roles[split], f"data.{split}"))
    return files


def dataset_fingerprint(files: list[InputFile], config: PipelineConfig) -> str:
    """Hex digest of the inputs' contents and every setting that changes the dataset.

    Paths are left out on purpose: the same files moved elsewhere give the same dataset.
    Keys that only pair formats read are left out of other formats' fingerprints, so a
    document dataset keeps the fingerprint it had before those keys existed.
    """
    pair_globs = {f"{side}_{split}" for side in ("source", "target") for split in ("train", "valid", "test")}
    pairs = config.data.is_pairs
    preprocess = config.preprocess.model_dump(
        exclude={"output_dir", "batch_lines", *(() if pairs else ("max_pair_tokens",))})
    body = {
        "format_version": DATASET_FORMAT_VERSION,
        "data": config.data.model_dump(exclude={
            "train", "valid", "test", *pair_globs,
            *(() if pairs else ("source_field", "target_field"))}),
        "tokenizer": config.tokenizer.model_dump(exclude=set() if pairs else {"shared_vocab"}),
        "preprocess": preprocess,
        "files": sorted((f.role, f.sha256) for f in files),
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _expand(pattern: str, key: str, work_dir: str) -> list[str]:
    if pattern.startswith(BUILTIN_PREFIX):
        return _builtin_files(pattern[len(BUILTIN_PREFIX):], key, work_dir)
    if os.path.isdir(pattern):
        raise InputDataError(
            f"{key}: {pattern!r} is a directory; give a file glob such as "
            f"{os.path.join(pattern, '*.txt')!r}"
        )
    try:
        matches = FileSystems.match([pattern])[0].metadata_list
    except Exception as err:  # Beam raises BeamIOError with a long message
        raise InputDataError(f"{key}: cannot list {pattern!r}: {err}") from None
    paths = sorted(m.path for m in matches if not m.path.endswith("/"))
    if not paths:
        what = "matched no files" if any(c in pattern for c in "*?[") else "does not exist"
        raise InputDataError(f"{key}: {pattern!r} {what}; check the path in pipeline_config.yaml")
    return paths


def _inspect(path: str, role: str, key: str) -> InputFile:
    with FileSystems.open(path) as f:  # decompresses .gz/.bz2 by suffix
        head = f.read(_SNIFF_BYTES)
    nul = head.find(b"\x00")
    if nul >= 0:
        raise InputDataError(
            f"{key}: {path} looks binary (NUL byte at offset {nul}); "
            "only text corpora can be read, so remove it or narrow the glob"
        )
    digest = hashlib.sha256()
    size = 0
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return InputFile(path=path, size=size, sha256=digest.hexdigest(), role=role)


def _builtin_files(name: str, key: str, work_dir: str) -> list[str]:
    """Writes a built-in corpus as files once (atomically) and returns their paths."""
    if name not in BUILTIN_CORPORA:
        raise InputDataError(
            f"{key}: unknown built-in corpus {name!r}; available: "
            + ", ".join(BUILTIN_PREFIX + n for n in BUILTIN_CORPORA)
        )
    from pydoc_data.topics import topics  # CPython's reference documentation

    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    folder = os.path.abspath(os.path.join(work_dir, "_builtin", f"{name}-py{version}"))
    if not os.path.isdir(folder):
        tmp = f"{folder}.tmp-{os.getpid()}"
        os.makedirs(tmp, exist_ok=True)
        for topic, text in sorted(topics.items()):
            with open(os.path.join(tmp, f"{topic}.txt"), "w", encoding="utf-8") as f:
                f.write(text)
        try:
            os.rename(tmp, folder)
        except OSError:  # another process won the race: its copy is identical
            shutil.rmtree(tmp, ignore_errors=True)
    return sorted(os.path.join(folder, n) for n in os.listdir(folder))
