"""BLEU of a sequence-to-sequence model on a pair split, decoded by the serving decoders.

The sources are the records' own ids (exactly what training saw), decoded in batches by
`serving.decoders.generate` (greedy) or `serving.decoders.beam_search` in one compiled function; the
hypotheses and references are the target tokenizer's detokenized tokens, so the score is
*tokenized* BLEU over this pipeline's tokens (lowercased when the tokenizer lowercases:
the convention of the Multi30k papers), computed by sacrebleu with `tokenize="none"`,
and its signature string says so. `bench/seq2seq.py` also scores against the raw
reference files.

Example:
    >>> result = corpus_bleu(model, pair_tokenizers(model_dir), load_pairs(d, "test"), method="greedy")
    >>> result.score, result.signature
    (31.2, 'nrefs:1|case:mixed|eff:no|tok:none|smooth:exp|version:2.6.0')
"""

from __future__ import annotations

import dataclasses

import numpy as np
import sacrebleu
import tensorflow as tf

from pipeline.core.constants import EOS_ID, PAD_ID
from serving.decoders.beam_search import beam_search
from serving.decoders.generate import generate
from serving.decoders.strategies import get_strategy
from serving.knobs import Knobs


@dataclasses.dataclass(frozen=True)
class BleuResult:
    """Corpus BLEU of one decoding method (sacrebleu), with what it was computed from.
    Example: `corpus_bleu(model, tokenizers, pairs).score` -> 38.69."""

    method: str
    score: float
    signature: str
    hypotheses: list[str]
    references: list[str]
    detail: str  # sacrebleu's one-line summary (n-gram precisions, brevity penalty)
    outputs: list[np.ndarray] = dataclasses.field(default_factory=list)  # decoded ids, without <eos>


def decode_sources(model, sources: list[np.ndarray], method: str = "greedy", beam_width: int = 5,
                   length_penalty: float = 0.6, batch_size: int = 64, max_new_tokens: int = 100) -> list[np.ndarray]:
    """The model's output ids (without <eos>) for every source (ids [S_i]), in order.

    Each row may write up to min(max_new_tokens, 2 x its source length + 10) tokens."""
    ids_spec = tf.TensorSpec([None, None], tf.int32)

    @tf.function(input_signature=[ids_spec, tf.TensorSpec([None], tf.int32)])
    def run(source, lengths):
        batch = tf.shape(source)[0]
        cap = tf.minimum(2 * lengths + 10, max_new_tokens)
        if method == "beam_search":
            knobs = Knobs.defaults(batch, beam_width=beam_width, length_penalty=length_penalty)._replace(
                max_new_tokens=cap)
            out = beam_search(model, source, lengths, knobs)
            return out.token_ids[:, 0], out.lengths[:, 0]
        knobs = Knobs.defaults(batch)._replace(max_new_tokens=cap)
        out = generate(model, source, lengths, knobs, get_strategy(method))
        return out.token_ids, out.lengths

    outputs: list[np.ndarray] = []
    for start in range(0, len(sources), batch_size):
        rows = sources[start:start + batch_size]
        lengths = np.array([len(r) for r in rows], np.int32)
        source = np.full([len(rows), lengths.max()], PAD_ID, np.int32)
        for i, r in enumerate(rows):
            source[i, :len(r)] = r
        tokens, counts = run(tf.constant(source), tf.constant(lengths))
        for row, n in zip(tokens.numpy(), counts.numpy()):
            row = row[:n]
            outputs.append(row[row != EOS_ID])
    return outputs


def detokenize(tokenizer, rows: list[np.ndarray]) -> list[str]:
    """Token ids per row -> strings (the tokenizer's own detokenization)."""
    if not rows:
        return []
    ragged = tf.ragged.constant([r.tolist() for r in rows], dtype=tf.int64, ragged_rank=1)
    return [t.decode("utf-8", errors="replace") for t in tokenizer.detokenize(ragged).numpy()]


def encode_texts(tokenizer, texts: list[str]) -> list[np.ndarray]:
    """Strings -> ids per row with the tokenizer's `encode_lines` (as records are made)."""
    ragged = tokenizer.encode_lines(tf.constant(texts))
    return [np.asarray(r, np.int32) for r in ragged.numpy()]


def bleu(hypotheses: list[str], references: list[str], method: str = "") -> BleuResult:
    """sacrebleu corpus BLEU of whitespace-tokenized strings (tokenize="none")."""
    metric = sacrebleu.metrics.BLEU(tokenize="none")
    score = metric.corpus_score(hypotheses, [references])
    return BleuResult(method, float(score.score), str(metric.get_signature()), hypotheses, references, str(score))


def corpus_bleu(model, tokenizers: dict, pairs, method: str = "greedy", source_texts: list[str] | None = None,
                **decode_args) -> BleuResult:
    """Tokenized corpus BLEU of `model`'s `method` decodes of `pairs` against their targets.

    `tokenizers` are the model's own ({"source", "target"}); with `source_texts` the
    sources are read from text through them (a model of another vocabulary, such as a
    champion), else the records' source ids are used as they are."""
    if source_texts is None:
        sources = [pairs.source(i) for i in range(len(pairs))]
    else:
        sources = encode_texts(tokenizers["source"], source_texts)
    outputs = decode_sources(model, sources, method, **decode_args)
    result = bleu(detokenize(tokenizers["target"], outputs), reference_texts(tokenizers["target"], pairs), method)
    return dataclasses.replace(result, outputs=outputs)


def reference_texts(target_tokenizer, pairs) -> list[str]:
    """The targets of `pairs` as detokenized strings (<eos> dropped)."""
    return detokenize(target_tokenizer, [pairs.target(i)[pairs.target(i) != EOS_ID] for i in range(len(pairs))])


def source_texts(source_tokenizer, pairs) -> list[str]:
    """The sources of `pairs` as detokenized strings (<eos> dropped)."""
    return detokenize(source_tokenizer, [pairs.source(i)[pairs.source(i) != EOS_ID] for i in range(len(pairs))])
