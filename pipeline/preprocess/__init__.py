"""The Beam stage: a corpus (documents or text pairs) -> a dataset folder.

    run            run_preprocess: picks the documents or the pairs pipeline by data.format
    documents      the documents pipeline; pairs: the pairs pipeline (never import each other)
    dataset_folder the folder's contract: staged writing, metadata, stats, the atomic rename
    corpus, pairs_inputs        the input files, checked before Beam starts
    reading, pairs_reading      block reading (each block read once) and the split rule
    vocabulary                  the vocabulary combiners
    encoding                    text -> ids, the tokenizer per vocabulary, token counts (both paths)
    tokenize_fn, pairs_encode   the Beam steps: ids into records, with per-split counts
    split_stats, pairs_stats    the counts merged into stats.json

Imports only `pipeline.core`.
"""
