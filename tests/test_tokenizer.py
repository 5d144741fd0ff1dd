"""Tokenizers against sentencepiece itself: a tiny BPE model trained here, read directly and
through its llama2.c tokenizer.bin export, must encode and decode exactly as sentencepiece."""
from __future__ import annotations

import io
import random

import pytest

from polyllama.errors import TokenizerError
from polyllama.tokenizer import (Llama2cTokenizer, SentencePieceTokenizer, StreamDecoder,
                                 load_tokenizer)

from formats import write_tokenizer_bin

sentencepiece = pytest.importorskip("sentencepiece")

WORDS = ("once upon a time there was a little girl named lily she liked to play outside "
         "with her big red ball in the park one day the sun was shining and the birds sang "
         "her mom said be careful because it might rain later they laughed and went home "
         "naïve café über Grüße déjà vu señor piñata smörgåsbord 中文 日本語").split()
TEXTS = [
    "Once upon a time, there was a little girl named Lily.",
    "  leading spaces,  double  spaces and a trailing space ",
    "lines\nwith\n\nnewlines\n",
    "naïve café: Grüße aus München, señor!",
    "emoji 🦙🔥 and 中文 and 日本語 mixed",
    "digits 1234567890 and tabs\tand symbols <>{}[]#@~",
    "a",
    " ",
    "",
]


@pytest.fixture(scope="session")
def sp_files(tmp_path_factory):
    """A sentencepiece BPE model trained on a small corpus (Llama's settings: identity
    normalization, byte fallback, digits split) and its llama2.c tokenizer.bin export."""
    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 16)))
             + rng.choice([".", "!", "?", ",", ""]) for _ in range(3000)]
    lines += [f"{rng.randint(0, 10**6)} {rng.choice(WORDS).capitalize()}" for _ in range(200)]
    proto = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=proto, model_type="bpe", vocab_size=420,
        byte_fallback=True, character_coverage=1.0, normalization_rule_name="identity",
        remove_extra_whitespaces=False, split_digits=True, allow_whitespace_only_pieces=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, minloglevel=2)
    folder = tmp_path_factory.mktemp("spm")
    model = folder / "tokenizer.model"
    model.write_bytes(proto.getvalue())
    sp = sentencepiece.SentencePieceProcessor(model_file=str(model))
    write_tokenizer_bin(folder / "tokenizer.bin", sp)
    return sp, model, folder / "tokenizer.bin"


@pytest.fixture(scope="session", params=["tokenizer.model", "tokenizer.bin"])
def tok(request, sp_files):
    _, model, bin_path = sp_files
    return load_tokenizer(model if request.param == "tokenizer.model" else bin_path)


def test_detects_the_file_kind(sp_files):
    _, model, bin_path = sp_files
    assert isinstance(load_tokenizer(model), SentencePieceTokenizer)
    assert isinstance(load_tokenizer(bin_path), Llama2cTokenizer)


def test_special_ids(tok, sp_files):
    sp = sp_files[0]
    assert tok.vocab_size == sp.get_piece_size()
    assert (tok.bos_id, tok.eos_id) == (sp.bos_id(), sp.eos_id()) == (1, 2)
    assert tok.token_id("<s>") == 1 and tok.token_id("</s>") == 2
    assert tok.token_bytes(1) == tok.token_bytes(2) == b""


@pytest.mark.parametrize("text", TEXTS)
def test_encode_matches_sentencepiece(tok, sp_files, text):
    sp = sp_files[0]
    assert tok.encode(text) == [sp.bos_id()] + sp.encode(text)
    assert tok.encode(text, add_bos=False) == sp.encode(text)


def test_encode_matches_sentencepiece_on_random_text(tok, sp_files):
    sp = sp_files[0]
    rng = random.Random(1)
    alphabet = list("abcdefghijklmnopqrstuvwxyz  ,.!?\n0123456789éüñ中日🦙") + WORDS
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))
        assert tok.encode(text, add_bos=False) == sp.encode(text), repr(text)


def test_token_bytes_match_the_pieces(tok, sp_files):
    sp = sp_files[0]
    for i in range(sp.get_piece_size()):
        piece = sp.id_to_piece(i)
        if sp.is_byte(i):
            assert tok.token_bytes(i) == bytes([int(piece[3:5], 16)])
        elif not (sp.is_control(i) or sp.is_unknown(i)):
            assert tok.token_bytes(i) == piece.replace("\u2581", " ").encode(), piece


@pytest.mark.parametrize("text", TEXTS)
def test_decode_round_trips(tok, sp_files, text):
    sp = sp_files[0]
    assert tok.decode(tok.encode(text)) == text == sp.decode(sp.encode(text))


@pytest.mark.parametrize("text", TEXTS)
def test_stream_is_exact_and_never_splits_a_character(tok, text):
    ids = tok.encode(text)
    stream = StreamDecoder(tok)
    chunks = [stream.push(i) for i in ids] + [stream.flush()]
    assert "".join(chunks) == tok.decode(ids) == text
    assert not any("\ufffd" in c for c in chunks)
    generated = ids[1:]              # ids after the prompt's BOS, as a generator yields them
    raw = b"".join(tok.token_bytes(i) for i in generated)
    assert raw.decode("utf-8") == tok.decode(generated)


def test_emoji_bytes_are_held_back(tok):
    ids = tok.encode("🦙", add_bos=False)
    stream = StreamDecoder(tok)
    pieces = [stream.push(i) for i in ids]
    assert pieces[-1].endswith("🦙") and all(p.strip() == "" for p in pieces[:-1])


def test_vocab_mismatch(tok, sp_files):
    with pytest.raises(TokenizerError, match="do not belong together"):
        tok.check_vocab(tok.vocab_size + 1000)
    with pytest.raises(TokenizerError, match="do not belong together"):
        tok.check_vocab(tok.vocab_size - 1)
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        tok.decode([tok.vocab_size])
    n = sp_files[0].get_piece_size()
    with pytest.raises(TokenizerError, match=f"holds {n} tokens, the model has {n + 1}"):
        load_tokenizer(sp_files[2], vocab_size=n + 1)


@pytest.mark.parametrize("cut", [3, 101, -1, -7])
def test_truncated_tokenizer_bin(tmp_path, sp_files, cut):
    path = tmp_path / "tokenizer.bin"
    path.write_bytes(sp_files[2].read_bytes()[:cut])
    with pytest.raises(TokenizerError, match="truncated|too short"):
        load_tokenizer(path)


def test_tokenizer_bin_cut_at_a_record_boundary(tmp_path, sp_files):
    sp, _, bin_path = sp_files
    n = sp.get_piece_size()
    last = sp.id_to_piece(n - 1).replace("\u2581", " ").encode()
    path = tmp_path / "tokenizer.bin"
    path.write_bytes(bin_path.read_bytes()[:-(8 + len(last))])   # drop the last record
    with pytest.raises(TokenizerError, match=f"holds {n - 1} tokens, the model has {n}"):
        load_tokenizer(path, vocab_size=n)


@pytest.mark.parametrize("case, message", [
    ("empty", "the tokenizer file is empty"),
    ("directory", "is a directory"),
    ("missing", "cannot read the tokenizer"),
    ("garbage", "nor is it a sentencepiece model"),
    ("cut-model", "nor is it a sentencepiece model"),
])
def test_unreadable_tokenizer_files(tmp_path, sp_files, case, message):
    path = tmp_path / "tokenizer.model"
    if case == "empty":
        path.write_bytes(b"")
    elif case == "directory":
        path.mkdir()
    elif case == "garbage":
        path.write_bytes(bytes(range(256)) * 4)
    elif case == "cut-model":
        path.write_bytes(sp_files[1].read_bytes()[:-50])
    with pytest.raises(TokenizerError, match=message):
        load_tokenizer(path)
