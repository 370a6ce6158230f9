"""Per-split statistics of a pair dataset, finished into `stats.json`.

The pipeline sums partial stats with `SumStatsFn` and writes one JSON record per split
(`to_pair_json_record`); the launcher adds rates and length percentiles
(`finish_pair_split_stats`). A split's entry:

    pairs, pairs_read        pairs written / lines (or records) read
    skipped_empty            a side was empty or only whitespace
    skipped_too_long         a side had more than preprocess.max_pair_tokens tokens, or
                             more than preprocess.max_line_chars characters
    skipped_bad_records      pairs_tsv: too few columns; pairs_jsonl: unreadable JSON,
                             a missing field or a value that is not a string
    skipped_unpaired         a line without its partner (misaligned files; never in a
                             published dataset, which refuses misaligned files)
    invalid_utf8_lines       kept, bad bytes replaced by U+FFFD
    source, target           tokens, unk_tokens, oov_tokens, oov_rate, vocab_coverage,
                             length_{min,mean,max,p50,p90,p95,p99} (record lengths, <eos>
                             included)
    documents, lines, tokens, oov_rate
                             the document datasets' summary: pairs, pairs, both sides'
                             tokens, both sides' OOV rate

Example:
    >>> length_summary({3: 1, 5: 3})["length_p50"]
    5
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.core.constants import RESERVED_TOKENS
from pipeline.core.pair_records import SIDES

COUNTERS = (
    "pairs", "pairs_read", "skipped_empty", "skipped_too_long", "skipped_bad_records",
    "skipped_unpaired", "invalid_utf8_lines",
)
SIDE_COUNTERS = ("tokens", "unk_tokens", "oov_tokens")
PERCENTILES = (50, 90, 95, 99)


def to_pair_json_record(split: str, acc: dict[str, Any]) -> dict[str, Any]:
    """A JSON-ready summary of one split's summed stats."""
    record: dict[str, Any] = {"split": split}
    record.update({name: int(acc.get(name, 0)) for name in COUNTERS})
    for side in SIDES:
        out = {name: int(acc.get(f"{side}_{name}", 0)) for name in SIDE_COUNTERS}
        counts = acc.get(f"{side}_id_counts")
        out["vocab_types_seen"] = (
            int(np.count_nonzero(counts[len(RESERVED_TOKENS):])) if counts is not None else 0)
        lengths = acc.get(f"{side}_lengths") or {}
        out["lengths"] = {str(k): int(v) for k, v in sorted(lengths.items())}
        record[side] = out
    return record


def length_summary(lengths: dict[int, int]) -> dict[str, Any]:
    """min, mean, max and nearest-rank percentiles of a length histogram."""
    if not lengths:
        return {"length_min": 0, "length_mean": 0.0, "length_max": 0,
                **{f"length_p{q}": 0 for q in PERCENTILES}}
    keys = np.array(sorted(lengths), np.int64)
    counts = np.array([lengths[k] for k in keys], np.int64)
    cumulative = np.cumsum(counts)
    total = int(cumulative[-1])
    out = {
        "length_min": int(keys[0]),
        "length_mean": round(float((keys * counts).sum() / total), 3),
        "length_max": int(keys[-1]),
    }
    for q in PERCENTILES:
        rank = max(int(np.ceil(q / 100 * total)), 1)
        out[f"length_p{q}"] = int(keys[np.searchsorted(cumulative, rank)])
    return out


def finish_pair_split_stats(record: dict[str, Any], vocab_sizes: dict[str, int]) -> dict[str, Any]:
    """Adds per-side rates and length summaries, and the document-style summary."""
    out = {k: v for k, v in record.items() if k != "split" and k not in SIDES}
    for side in SIDES:
        s = dict(record[side])
        lengths = {int(k): v for k, v in s.pop("lengths").items()}
        s["oov_rate"] = s["oov_tokens"] / max(s["tokens"], 1)
        learned = max(vocab_sizes[side] - len(RESERVED_TOKENS), 1)
        s["vocab_coverage"] = s.pop("vocab_types_seen") / learned
        s.update(length_summary(lengths))
        out[side] = s
    tokens = sum(out[side]["tokens"] for side in SIDES)
    out.update(
        documents=out["pairs"], lines=out["pairs"], tokens=tokens,
        oov_rate=sum(out[side]["oov_tokens"] for side in SIDES) / max(tokens, 1))
    return out


def empty_pair_record(split: str) -> dict[str, Any]:
    """The record of a split that no pair reached."""
    return to_pair_json_record(split, {})
