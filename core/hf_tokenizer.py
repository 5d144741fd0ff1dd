"""Tokenizers run by the `tokenizers` library: Hugging Face `tokenizer.json` files and the
vocabularies GGUF files embed (`gpt2` byte-level BPE with merges, `llama` sentencepiece-style
BPE with scores). Every token also gets its exact output bytes, so a stream of generated
tokens can be turned into text without ever splitting a multi-byte character."""
from __future__ import annotations

import json
import re

from .errors import TokenizerError
from .tokenizer import Tokenizer

SPIECE_SPACE = "\u2581"
BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6   # GGUF token types

# How text is split into words before the merges run, by GGUF `tokenizer.ggml.pre`
# (the split llama.cpp uses for each; anything else gets GPT-2's own).
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_PRE = {"llama3", "llama-v3", "llama-bpe", "smaug-bpe", "dbrx", "falcon3"}
DIGITS_PRE = {"smollm", "starcoder", "refact", "codeshell", "command-r", "exaone", "minerva"}


def gpt2_byte_decoder() -> dict[str, int]:
    """GPT-2's printable spelling of the 256 byte values, as char -> byte."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars, extra = {b: b for b in printable}, 0
    for b in range(256):
        if b not in chars:
            chars[b] = 256 + extra
            extra += 1
    return {chr(c): b for b, c in chars.items()}


def _library():
    try:
        import tokenizers
    except ImportError as e:
        raise TokenizerError("this tokenizer needs the `tokenizers` package: "
                             "pip install tokenizers") from e
    return tokenizers


class HFTokenizer(Tokenizer):
    """A `tokenizers.Tokenizer` plus the bytes each token stands for. BOS is added here, by
    `add_bos`, never by the library's post-processor."""

    def __init__(self, backend, byte_level: bool, bos_id: int | None, eos_id: int | None,
                 add_bos: bool):
        self.backend = backend
        self.bos_id, self.eos_id, self.add_bos = bos_id, eos_id, bool(add_bos)
        if not byte_level:        # sentencepiece style: does encoding invent a leading space?
            first = backend.encode("a", add_special_tokens=False).tokens
            self.dummy_prefix = bool(first) and first[0].startswith(SPIECE_SPACE)
        vocab = backend.get_vocab(with_added_tokens=True)
        self.vocab_size = max(vocab.values()) + 1
        self._pieces = [""] * self.vocab_size
        for piece, i in vocab.items():
            self._pieces[i] = piece
        added = backend.get_added_tokens_decoder()
        byte_of = gpt2_byte_decoder() if byte_level else None
        self._bytes = []
        for i, piece in enumerate(self._pieces):
            if i in added:
                self._bytes.append(b"" if added[i].special else piece.encode("utf-8"))
            elif byte_of is not None:
                self._bytes.append(bytes(byte_of[c] for c in piece if c in byte_of))
            elif m := BYTE_PIECE.match(piece):
                self._bytes.append(bytes([int(m.group(1), 16)]))
            else:
                self._bytes.append(piece.replace(SPIECE_SPACE, " ").encode("utf-8"))

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        ids = self.backend.encode(text, add_special_tokens=False).ids
        add = self.add_bos if add_bos is None else add_bos
        return [self.bos_id, *ids] if add and self.bos_id is not None else list(ids)

    def token_bytes(self, token_id: int) -> bytes:
        return self._bytes[self._check_id(token_id)]

    def token_id(self, piece: str) -> int | None:
        return self.backend.token_to_id(piece)

    def piece(self, token_id: int) -> str:
        """The token as the vocabulary spells it (e.g. '<|im_end|>')."""
        return self._pieces[self._check_id(token_id)]

    def decode(self, ids) -> str:
        return self.backend.decode([self._check_id(int(i)) for i in ids],
                                   skip_special_tokens=True)


def _token_text(value) -> str | None:
    """tokenizer_config.json spells a special token as a string or as {"content": ...}."""
    return value.get("content") if isinstance(value, dict) else value


def load_tokenizer_json(path: str, tokenizer_config: dict | None = None,
                        bos_id: int | None = None, eos_id: int | None = None) -> HFTokenizer:
    """A `tokenizer.json`, with special tokens and add_bos_token from tokenizer_config.json
    (bos_id/eos_id are config.json's fallbacks)."""
    tk = _library()
    try:
        backend = tk.Tokenizer.from_file(str(path))
    except Exception as e:
        raise TokenizerError(f"{path}: not a readable tokenizer.json ({e})") from e
    config = tokenizer_config or {}

    def special(name, fallback):
        text = _token_text(config.get(name))
        found = backend.token_to_id(text) if text else None
        return fallback if found is None else found

    bos_id, eos_id = special("bos_token", bos_id), special("eos_token", eos_id)
    add_bos = config.get("add_bos_token")
    if add_bos is None:      # no flag: do what the file's post-processor does
        add_bos = bos_id is not None and \
            backend.encode("a", add_special_tokens=True).ids[:1] == [bos_id]
    decoder = json.loads(backend.to_str()).get("decoder")
    return HFTokenizer(backend, "ByteLevel" in json.dumps(decoder), bos_id, eos_id, add_bos)


def _byte_level_backend(tk, tokens: list[str], merges: list[str], pre: str | None):
    alphabet = gpt2_byte_decoder()
    spell = {b: c for c, b in alphabet.items()}
    vocab = {}
    for i, t in enumerate(tokens):      # a few converters store some tokens as plain text
        vocab[t if set(t) <= alphabet.keys() else "".join(spell[b] for b in t.encode())] = i
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    backend = tk.Tokenizer(tk.models.BPE(vocab, pairs, fuse_unk=False))
    pt = tk.pre_tokenizers
    if pre in LLAMA3_PRE:
        backend.pre_tokenizer = pt.Sequence([pt.Split(tk.Regex(LLAMA3_SPLIT), "isolated"),
                                             pt.ByteLevel(add_prefix_space=False,
                                                          use_regex=False)])
    elif pre in DIGITS_PRE:
        backend.pre_tokenizer = pt.Sequence([pt.Digits(individual_digits=True),
                                             pt.ByteLevel(add_prefix_space=False)])
    else:
        backend.pre_tokenizer = pt.ByteLevel(add_prefix_space=False)
    backend.decoder = tk.decoders.ByteLevel()
    return backend, alphabet.keys()


def _sentencepiece_backend(tk, tokens: list[str], scores, types, unk_id, space_prefix: bool):
    """BPE whose merge ranks follow the score of the merged piece: the sentencepiece rule
    'merge the adjacent pair whose union scores highest'."""
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = []
    for i, t in enumerate(tokens):
        if types[i] in (NORMAL, USER_DEFINED):
            for k in range(1, len(t)):
                if t[:k] in vocab and t[k:] in vocab:
                    merges.append((-scores[i], i, vocab[t[:k]], t[:k], t[k:]))
    merges.sort()
    unk = tokens[unk_id] if unk_id is not None and 0 <= unk_id < len(tokens) else None
    model = tk.models.BPE(vocab, [(m[3], m[4]) for m in merges], unk_token=unk,
                          byte_fallback=True, fuse_unk=True)
    backend = tk.Tokenizer(model)
    nz, dec = tk.normalizers, tk.decoders
    replace = nz.Replace(" ", SPIECE_SPACE)
    backend.normalizer = nz.Sequence([nz.Prepend(SPIECE_SPACE), replace]) if space_prefix \
        else replace
    steps = [dec.Replace(SPIECE_SPACE, " "), dec.ByteFallback(), dec.Fuse()]
    backend.decoder = dec.Sequence(steps + ([dec.Strip(" ", 1, 0)] if space_prefix else []))
    return backend, None


def gguf_tokenizer(meta: dict) -> HFTokenizer:
    """The tokenizer a GGUF file describes; meta maps its `tokenizer.*` keys to values."""
    tk = _library()
    kind = meta.get("tokenizer.ggml.model")
    tokens = meta.get("tokenizer.ggml.tokens")
    if not tokens:
        raise TokenizerError("GGUF file has no tokenizer.ggml.tokens")
    types = meta.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens)
    unk_id = meta.get("tokenizer.ggml.unknown_token_id")
    if kind not in ("gpt2", "llama"):
        raise TokenizerError(f"GGUF tokenizer model {kind!r} is not supported "
                             "(supported: gpt2, llama)")
    if kind == "gpt2" and "tokenizer.ggml.merges" not in meta:
        raise TokenizerError("GGUF gpt2 tokenizer has no tokenizer.ggml.merges")
    try:
        if kind == "gpt2":
            backend, alphabet = _byte_level_backend(tk, tokens, meta["tokenizer.ggml.merges"],
                                                    meta.get("tokenizer.ggml.pre"))
        else:
            backend, alphabet = _sentencepiece_backend(
                tk, tokens, meta.get("tokenizer.ggml.scores") or [0.0] * len(tokens), types,
                unk_id, meta.get("tokenizer.ggml.add_space_prefix", True))
    except Exception as e:     # the library raises plain Exception on inconsistent input
        raise TokenizerError(f"GGUF {kind} vocabulary is inconsistent ({e}); "
                             "the file is corrupt") from e
    def added(kind):      # a byte-level token spelled outside the byte alphabet is no token
        return [tk.AddedToken(t, normalized=False, special=kind == CONTROL)
                for t, ty in zip(tokens, types)
                if ty == kind and (alphabet is None or set(t) <= alphabet)]

    backend.add_special_tokens(added(CONTROL))
    backend.add_tokens(added(USER_DEFINED))
    if backend.get_vocab_size(with_added_tokens=True) != len(tokens):
        raise TokenizerError("GGUF vocabulary has duplicate tokens; the file is corrupt")
    return HFTokenizer(backend, kind == "gpt2", meta.get("tokenizer.ggml.bos_token_id"),
                       meta.get("tokenizer.ggml.eos_token_id"),
                       meta.get("tokenizer.ggml.add_bos_token", kind == "llama"))
