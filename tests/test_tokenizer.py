import tensorflow as tf

from pipeline.core.constants import RESERVED_TOKENS
from pipeline.core.tokenizer import Tokenizer, TokenizerSpec, read_vocab, vocab_file_text

VOCAB = [*RESERVED_TOKENS, "the", "cat", "école"]


def ids(ragged):
    return ragged.to_list()


def test_word_ids_unknowns_and_eos():
    tok = Tokenizer(TokenizerSpec(kind="word"), vocab=VOCAB)
    assert ids(tok.encode_lines(tf.constant(["the cat", "the  dog ", ""]))) == [[4, 5, 3], [4, 1, 3], [3]]
    assert ids(tok.tokenize(tf.constant(["<unk> cat <eos>"]))) == [[1, 5, 3]]


def test_normalisation_nfc_lowercase_and_whitespace():
    tok = Tokenizer(TokenizerSpec(kind="word", lowercase=True), vocab=VOCAB)
    decomposed = "E\u0301COLE\tThe"  # E + combining acute: NFC makes it one character
    assert ids(tok.tokenize(tf.constant([decomposed]))) == [[6, 4]]
    assert tok.normalize(tf.constant([decomposed])).numpy()[0].decode() == "école the"


def test_char_kind_keeps_spaces():
    tok = Tokenizer(TokenizerSpec(kind="char"), vocab=[*RESERVED_TOKENS, "a", " ", "b"])
    out = tok.encode_lines(tf.constant(["ab a\tc"]))
    assert ids(out) == [[4, 6, 5, 4, 5, 1, 3]]
    assert tok.detokenize(out).numpy()[0] == b"ab a <unk>"


def test_subword_wordpiece_and_detokenize():
    vocab = [*RESERVED_TOKENS, "hello", "wor", "##ld", ",", "!", "##s"]
    tok = Tokenizer(TokenizerSpec(kind="subword", lowercase=True), vocab=vocab)
    out = tok.tokenize(tf.constant(["Hello, World! worlds xyz"]))
    assert ids(out) == [[4, 7, 5, 6, 8, 5, 6, 9, 1]]
    assert tok.detokenize(out).numpy()[0] == b"hello , world ! worlds <unk>"


def test_detokenize_drops_reserved_but_unk():
    tok = Tokenizer(TokenizerSpec(kind="word"), vocab=VOCAB)
    dense = tf.constant([[2, 4, 1, 5, 3, 0, 0]], tf.int64)
    assert tok.detokenize(dense).numpy()[0] == b"the <unk> cat"


def test_file_table_equals_memory_table(tmp_path):
    vocab = [*RESERVED_TOKENS, " ", "a", "b"]
    path = tmp_path / "vocab.txt"
    path.write_text(vocab_file_text(vocab))
    assert read_vocab(str(path)) == vocab
    spec = TokenizerSpec(kind="char")
    lines = tf.constant(["a b", "ba c"])
    from_file = Tokenizer(spec, vocab_file=str(path)).encode_lines(lines)
    in_memory = Tokenizer(spec, vocab=vocab).encode_lines(lines)
    assert ids(from_file) == ids(in_memory) == [[5, 4, 6, 3], [6, 5, 4, 1, 3]]


def test_vocab_must_start_with_reserved():
    import pytest

    with pytest.raises(ValueError, match="must start with"):
        Tokenizer(TokenizerSpec(), vocab=["the", "cat"])
