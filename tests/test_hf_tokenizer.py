"""Tokenizers from tokenizer.json and from GGUF vocabularies, checked against the libraries
that define them: `tokenizers` (byte-level BPE trained here), sentencepiece (a BPE model
trained here) and transformers' own GGUF tokenizer conversion."""
from __future__ import annotations

import io
import json

import pytest

from polyllama import TokenizerError
from polyllama.hf_tokenizer import HFTokenizer, gguf_tokenizer, load_tokenizer_json
from polyllama.tokenizer import StreamDecoder

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
WORDS = ("the quick brown fox jumps over a lazy dog while naïve café owners sing déjà vu "
         "songs about 日本語 text and emoji 😀🎉 in 2024 with über-long lines\n").split(" ")
CORPUS = [" ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(12)) for i in range(300)]
TEXTS = ["Hello world", "the quick brown fox", "Héllo wörld — naïve café 😀🎉 日本語",
         "new\nlines\n\n  and  double  spaces\tand tabs ", "  leading and trailing  ",
         "digits 1234567 and 3.14", "unseen: Ω≈ç√ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ✓", ""]


def train_byte_level(vocab_size: int = 420):
    """A GPT-2-style byte-level BPE trained by the `tokenizers` library itself."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


def gguf_fields_of(tok, pre: str = "gpt2") -> dict:
    """The tokenizer.* metadata llama.cpp's converter writes for a byte-level BPE."""
    n = tok.get_vocab_size()
    merges = json.loads(tok.to_str())["model"]["merges"]
    return {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": pre,
            "tokenizer.ggml.tokens": [tok.id_to_token(i) for i in range(n)],
            "tokenizer.ggml.token_type": [3 if tok.id_to_token(i) in SPECIALS else 1
                                          for i in range(n)],
            "tokenizer.ggml.merges": [m if isinstance(m, str) else " ".join(m) for m in merges],
            "tokenizer.ggml.bos_token_id": 0, "tokenizer.ggml.eos_token_id": 2,
            "tokenizer.ggml.add_bos_token": False}


def train_sentencepiece(vocab_size: int = 340):
    """A Llama-style sentencepiece BPE model (byte fallback, dummy prefix, digits split)."""
    import sentencepiece as spm
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_writer=proto, vocab_size=vocab_size,
        model_type="bpe", byte_fallback=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, split_digits=True, hard_vocab_limit=False,
        unk_id=0, bos_id=1, eos_id=2, minloglevel=2)
    return spm.SentencePieceProcessor(model_proto=proto.getvalue())


def sentencepiece_fields(sp) -> dict:
    n = sp.get_piece_size()
    kind = [2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i)
            else 5 if sp.is_unused(i) else 1 for i in range(n)]
    return {"tokenizer.ggml.model": "llama",
            "tokenizer.ggml.tokens": [sp.id_to_piece(i) for i in range(n)],
            "tokenizer.ggml.scores": [sp.get_score(i) for i in range(n)],
            "tokenizer.ggml.token_type": kind, "tokenizer.ggml.bos_token_id": 1,
            "tokenizer.ggml.eos_token_id": 2, "tokenizer.ggml.unknown_token_id": 0}


@pytest.fixture(scope="module")
def byte_level():
    return train_byte_level()


@pytest.fixture(scope="module")
def sp():
    return train_sentencepiece()


def streamed(tok, ids) -> list[str]:
    dec = StreamDecoder(tok)
    return [dec.push(i) for i in ids] + [dec.flush()]


def assert_streams_exactly(tok, ids, text):
    pieces = streamed(tok, ids)
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces), "a character was split across pieces"


# ---------------------------------------------------------------- byte-level BPE


@pytest.mark.parametrize("source", ["tokenizer.json", "gguf"])
def test_byte_level_matches_the_library(byte_level, tmp_path, source):
    if source == "gguf":
        ours = gguf_tokenizer(gguf_fields_of(byte_level))
    else:
        byte_level.save(str(tmp_path / "tokenizer.json"))
        ours = load_tokenizer_json(tmp_path / "tokenizer.json",
                                   {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"})
    assert ours.vocab_size == byte_level.get_vocab_size()
    for text in TEXTS + ["<|im_start|>user\nhi 😀<|im_end|>\n"]:
        ids = ours.encode(text, add_bos=False)
        assert ids == byte_level.encode(text).ids, text
        assert ours.decode(ids) == byte_level.decode(ids)
    for text in TEXTS:
        ids = ours.encode(text, add_bos=False)
        assert ours.decode(ids) == text
        assert b"".join(ours.token_bytes(i) for i in ids) == text.encode()
        assert_streams_exactly(ours, ids, text)


def test_special_tokens_are_single_ids_with_no_output(byte_level):
    ours = gguf_tokenizer(gguf_fields_of(byte_level))
    im_end = ours.token_id("<|im_end|>")
    assert ours.encode("a<|im_end|>b", add_bos=False)[1] == im_end
    assert ours.token_bytes(im_end) == b"" and ours.piece(im_end) == "<|im_end|>"
    assert (ours.bos_id, ours.eos_id, ours.add_bos) == (0, 2, False)
    assert ours.encode("hi", add_bos=True)[0] == 0


def test_gguf_byte_level_matches_transformers(byte_level, tmp_path):
    """transformers reads the same GGUF tokenizer metadata on its own."""
    gguf = pytest.importorskip("gguf")
    from transformers import AutoTokenizer
    fields = gguf_fields_of(byte_level)
    w = gguf.GGUFWriter(str(tmp_path / "tok.gguf"), "llama")
    w.add_tokenizer_model("gpt2")
    w.add_token_list(fields["tokenizer.ggml.tokens"])
    w.add_token_types(fields["tokenizer.ggml.token_type"])
    w.add_token_merges(fields["tokenizer.ggml.merges"])
    w.add_bos_token_id(0)
    w.add_eos_token_id(2)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    theirs = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="tok.gguf")
    ours = gguf_tokenizer(fields)
    for text in TEXTS + ["<|im_start|>system\nbe brief<|im_end|>"]:
        assert ours.encode(text, add_bos=False) == \
            theirs.encode(text, add_special_tokens=False), text


def test_digit_splitting_pre_tokenizer(byte_level):
    """GGUF `pre` = smollm splits digits one by one (like the model's own tokenizer.json)."""
    from tokenizers import pre_tokenizers
    ours = gguf_tokenizer(gguf_fields_of(byte_level, pre="smollm"))
    ref = train_byte_level()
    ref.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    for text in TEXTS:
        assert ours.encode(text, add_bos=False) == ref.encode(text).ids, text


def test_add_bos_follows_config_or_post_processor(byte_level, tmp_path):
    from tokenizers import processors
    byte_level.save(str(tmp_path / "tokenizer.json"))
    path = tmp_path / "tokenizer.json"
    cfg = {"bos_token": {"content": "<|endoftext|>"}, "eos_token": "<|im_end|>"}
    tok = load_tokenizer_json(path, {**cfg, "add_bos_token": True})
    assert tok.bos_id == 0 and tok.eos_id == 2 and tok.encode("hi")[0] == 0
    assert load_tokenizer_json(path, {**cfg, "add_bos_token": False}).encode("hi")[0] != 0
    assert not load_tokenizer_json(path, cfg).add_bos     # no post-processor adds it
    with_bos = train_byte_level()
    with_bos.post_processor = processors.TemplateProcessing(
        single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", 0)])
    with_bos.save(str(path))
    tok = load_tokenizer_json(path, cfg)
    assert tok.add_bos and tok.encode("hi") == [0] + with_bos.encode("hi").ids[1:]


def test_tokenizer_json_given_by_path_reads_the_config_beside_it(byte_level, tmp_path):
    from polyllama import TokenizerError
    from polyllama.tokenizer import load_tokenizer
    byte_level.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(
        '{"bos_token": "<|endoftext|>", "eos_token": "<|im_end|>", "add_bos_token": true}')
    tok = load_tokenizer(tmp_path / "tokenizer.json")
    assert (tok.bos_id, tok.eos_id) == (0, 2)
    assert tok.encode("hi") == [0] + byte_level.encode("hi").ids
    with pytest.raises(TokenizerError, match="do not belong together"):
        load_tokenizer(tmp_path / "tokenizer.json", vocab_size=tok.vocab_size + 1000)


# ---------------------------------------------------------------- sentencepiece-style


def test_gguf_llama_vocabulary_matches_sentencepiece(sp):
    ours = gguf_tokenizer(sentencepiece_fields(sp))
    assert (ours.bos_id, ours.eos_id, ours.add_bos) == (1, 2, True)
    for text in TEXTS:
        ids = ours.encode(text, add_bos=False)
        assert ids == sp.encode(text), text
        assert ours.decode(ids) == sp.decode(ids) == text
        assert ours.encode(text) == [1] + ids
        # streamed after BOS, the space sentencepiece invented is dropped again
        assert_streams_exactly(ours, [1] + ids, text)


def test_sentencepiece_byte_pieces_and_controls(sp):
    ours = gguf_tokenizer(sentencepiece_fields(sp))
    assert ours.token_bytes(sp.piece_to_id("<0xF0>")) == b"\xf0"
    assert ours.token_bytes(1) == b"" and ours.token_bytes(2) == b""
    piece = next(p for p in (sp.id_to_piece(i) for i in range(sp.get_piece_size()))
                 if p.startswith("\u2581") and len(p) > 1)
    assert ours.token_bytes(sp.piece_to_id(piece)) == (" " + piece[1:]).encode()


def test_unsupported_gguf_tokenizer():
    with pytest.raises(TokenizerError, match="'bert'"):
        gguf_tokenizer({"tokenizer.ggml.model": "bert", "tokenizer.ggml.tokens": ["a"]})
    with pytest.raises(TokenizerError, match="no tokenizer.ggml.tokens"):
        gguf_tokenizer({"tokenizer.ggml.model": "gpt2"})


def test_inconsistent_gguf_vocabulary(byte_level):
    fields = gguf_fields_of(byte_level)
    fields["tokenizer.ggml.merges"] = fields["tokenizer.ggml.merges"] + ["zzz qqq"]
    with pytest.raises(TokenizerError, match="corrupt"):
        gguf_tokenizer(fields)


def test_unreadable_tokenizer_json(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="tokenizer.json"):
        load_tokenizer_json(tmp_path / "tokenizer.json")


def test_hf_directory_brings_its_tokenizer_and_template(byte_level, tmp_path):
    import refmodel
    from polyllama.hf import load_hf_dir
    refmodel.make_hf_model("gqa-tied").save_pretrained(tmp_path)
    byte_level.save(str(tmp_path / "tokenizer.json"))
    template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": template, "bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
         "add_bos_token": False}))
    ckpt = load_hf_dir(tmp_path)
    assert isinstance(ckpt.tokenizer, HFTokenizer) and ckpt.chat_template == template
    assert (ckpt.tokenizer.bos_id, ckpt.tokenizer.eos_id) == (1, 2)
    assert ckpt.tokenizer.encode(TEXTS[2]) == byte_level.encode(TEXTS[2]).ids


def test_hf_directory_with_a_sentencepiece_model(sp, tmp_path):
    import refmodel
    from polyllama.hf import load_hf_dir
    refmodel.make_hf_model("gqa-tied").save_pretrained(tmp_path)
    (tmp_path / "tokenizer.model").write_bytes(sp.serialized_model_proto())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": False}))
    tok = load_hf_dir(tmp_path).tokenizer
    assert not tok.add_bos and tok.encode(TEXTS[2]) == sp.encode(TEXTS[2])
