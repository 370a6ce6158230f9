"""Multi30k translation with the seq2seq model (attention LSTM), through lmpipe itself.

Preprocesses `../shared/corpora/multi30k/tok` (the Moses-normalized, tokenized,
lowercased files the papers score on; words seen at least twice, one vocabulary per
side), trains with `lmpipe`'s trainer, decodes the 1,000 test2016 sentences greedily and
with beam search (width 5), and prints test BLEU two ways:
  (A) tokenized lowercased BLEU against `tok/test.lc.norm.tok.*` (sacrebleu, tok:none):
      the convention of the multimodal-MT papers (LSTM baselines around 35, en->de);
  (S) sacrebleu's standard BLEU against the raw `test.*` references, case-insensitive
      (the hypotheses lowercased, Moses escapes undone), with its signature;
plus perplexity, parameters and wall time. Anchors (RESULTS.md): the attention-GRU
tutorial, 28.1-28.3 BLEU de->en greedy at 20.5M parameters; Lample et al.'s supervised
bidirectional LSTM, 38.4 en->de greedy.

Usage: python bench/seq2seq.py [--direction de-en|en-de] [--epochs 10] [--hidden 256]
                               [--quick] [--work FOLDER]
"""

from __future__ import annotations

import argparse
import html
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HERE = os.path.dirname(os.path.abspath(__file__))
MULTI30K = os.path.join(HERE, "..", "..", "shared", "corpora", "multi30k")
TOK = {("train", "en"): "tok/train.lc.norm.tok.en", ("train", "de"): "tok/train.lc.norm.tok.de",
       ("valid", "en"): "tok/valid.lc.norm.tok.en", ("valid", "de"): "tok/valid.revised.lc.norm.tok.de",
       ("test", "en"): "tok/test.lc.norm.tok.en", ("test", "de"): "tok/test.lc.norm.tok.de"}


def settings(args, work: str, source: str, target: str) -> list[str]:
    files = []
    for split in ("train", "valid", "test"):
        for side, lang in (("source", source), ("target", target)):
            path = os.path.join(MULTI30K, TOK[split, lang])
            if args.quick and split == "train":
                path = _head(path, os.path.join(work, f"quick.{lang}"), 2000)
            files.append(f"data.{side}_{split}={path}")
    return files + [
        "data.format=pairs", "tokenizer.kind=word", "tokenizer.lowercase=true", "tokenizer.min_count=2",
        "tokenizer.max_vocab=20000", "tokenizer.shared_vocab=false", "tokenizer.add_eos=true",
        "model.kind=seq2seq", f"model.embedding_dim={args.hidden}", f"model.hidden_dim={args.hidden}",
        "model.num_layers=1", "model.encoder_layers=1", "model.bidirectional_encoder=true",
        "model.attention=luong", "model.input_feeding=true", f"model.dropout={args.dropout}",
        "train.optimizer=adam", f"train.learning_rate={args.learning_rate}", "train.batch_size=64",
        f"train.epochs={1 if args.quick else args.epochs}", "train.lr_decay=0.5",
        f"train.lr_decay_start_epoch={args.decay_from}", "train.clip_norm=5", "train.init_scale=0.1",
        "train.early_stopping_patience=3",
        f"preprocess.output_dir={work}/data", f"train.output_dir={work}/train",
        f"tracking.uri=sqlite:///{work}/mlflow.db"]


def _head(path: str, out: str, lines: int) -> str:
    with open(path, encoding="utf-8") as f, open(out, "w", encoding="utf-8") as g:
        for i, line in enumerate(f):
            if i == lines:
                break
            g.write(line)
    return out


def _lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--direction", choices=["de-en", "en-de"], default="de-en")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--dropout", type=float, default=0.3)
    parser.add_argument("--learning-rate", type=float, default=0.002)
    parser.add_argument("--decay-from", type=int, default=6, help="first epoch with the learning rate halved")
    parser.add_argument("--beam-width", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="2,000 training pairs, 1 epoch (a smoke run)")
    parser.add_argument("--work", help="work folder (default: a temporary one)")
    args = parser.parse_args()
    if not os.path.isdir(MULTI30K):
        sys.exit(f"skipped: Multi30k not found at {os.path.abspath(MULTI30K)}")
    from pipeline.core.config_loader import load_config
    from pipeline.core.pair_records import pair_tokenizers
    from pipeline.preprocess.run import run_preprocess
    from serving.translation_eval import bleu, decode_sources, detokenize
    from trainer.pairs_data import load_pairs
    from trainer.model_dir import load_trained_model
    from trainer.train_run import train_model

    source, target = args.direction.split("-")
    work = args.work or tempfile.mkdtemp(prefix="multi30k-bench-")
    os.makedirs(work, exist_ok=True)
    config = load_config(None, settings(args, work, source, target))
    started = time.perf_counter()
    dataset = run_preprocess(config, [])
    prep = time.perf_counter() - started
    result = train_model(config, dataset.dataset_dir, verbose=True)
    trained = time.perf_counter() - started
    m = result.metrics
    model, tokenizers = load_trained_model(result.model_dir), pair_tokenizers(result.model_dir)
    pairs = load_pairs(dataset.dataset_dir, "test")
    sources = [pairs.source(i) for i in range(len(pairs))]
    tok_refs = _lines(os.path.join(MULTI30K, TOK["test", target]))
    raw_refs = _lines(os.path.join(MULTI30K, f"test.{target}"))
    print(f"Multi30k {args.direction}: {m['param_count']:,} parameters, {m['epochs']} epochs, valid ppl "
          f"{m['valid_ppl']:.2f}, test ppl {m['test_ppl']:.2f}; preprocess {prep:.0f} s, "
          f"train {(trained - prep) / 60:.1f} min", flush=True)
    import sacrebleu

    for method in ("greedy", "beam_search"):
        t0 = time.perf_counter()
        hyps = detokenize(tokenizers["target"], decode_sources(model, sources, method, beam_width=args.beam_width))
        seconds = time.perf_counter() - t0
        tokenized = bleu(hyps, tok_refs, method)
        standard = sacrebleu.metrics.BLEU(lowercase=True, force=True)  # 13a re-tokenizes both sides
        score = standard.corpus_score([html.unescape(h) for h in hyps], [raw_refs])
        print(f"  {method:11s} (A) tokenized lowercased BLEU {tokenized.score:.2f}   (S) sacrebleu "
              f"{score.score:.2f} [{standard.get_signature()}]   decode {seconds:.1f} s", flush=True)
    print(f"  wall {(time.perf_counter() - started) / 60:.1f} min; work folder {work}")


if __name__ == "__main__":
    main()
