"""Constants every stage shares: special tokens, record feature keys, format version.

A token id means the same in preprocessing, training and the exported graph because all
three take these values from here.
"""

PAD = "<pad>"
UNK = "<unk>"
BOS = "<bos>"
EOS = "<eos>"

# Reserved ids, in this order, at the top of every vocabulary.
RESERVED_TOKENS: tuple[str, ...] = (PAD, UNK, BOS, EOS)
PAD_ID = 0
UNK_ID = 1
BOS_ID = 2
EOS_ID = 3

# tf.train.Example feature keys of the preprocessed records.
FEATURE_IDS = "ids"  # int64 list: token ids of one record (a document or part of one)
FEATURE_DOC = "doc"  # bytes: stable key of the document the record belongs to
FEATURE_OFFSET = "offset"  # int64: byte offset of the record's first line in its file

SPLITS: tuple[str, ...] = ("train", "valid", "test")

# Bump when the on-disk dataset layout or tokenization changes: it is part of the
# dataset fingerprint, so old datasets are not reused by a newer lmpipe.
DATASET_FORMAT_VERSION = 1

TOKENIZER_FILE = "tokenizer.json"
VOCAB_FILE = "vocab.txt"
STATS_FILE = "stats.json"
WORDPIECE_SUFFIX = "##"
