"""Tokenizer interface, streaming detokenization, and the readers for sentencepiece
`tokenizer.model` and llama2.c `tokenizer.bin`."""
from __future__ import annotations

import codecs
import heapq
import os
import re
import struct

from .errors import TokenizerError

SPIECE_SPACE = "\u2581"
BYTE_PIECE = re.compile(rb"<0x([0-9A-Fa-f]{2})>")


class Tokenizer:
    """Text <-> token ids. Subclasses set the attributes and implement the three methods."""
    vocab_size: int
    bos_id: int | None = None
    eos_id: int | None = None
    add_bos: bool = True                  # prepend BOS when encoding a prompt
    dummy_prefix: bool = False            # encode prepends a space the text never had, so the
                                          # piece right after BOS loses its leading space

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        raise NotImplementedError

    def token_bytes(self, token_id: int) -> bytes:
        """The exact bytes this token contributes to the output text ('' for control tokens)."""
        raise NotImplementedError

    def token_id(self, piece: str) -> int | None:
        """The id of a piece spelled as in the vocabulary (e.g. '<|im_end|>'), or None."""
        raise NotImplementedError

    def decode(self, ids) -> str:
        out, prev = [], None
        for i in ids:
            out.append(self._bytes_after(prev, int(i)))
            prev = int(i)
        return b"".join(out).decode("utf-8", errors="replace")

    def check_vocab(self, model_vocab_size: int) -> None:
        if self.vocab_size > model_vocab_size or self.vocab_size < model_vocab_size - 512:
            raise TokenizerError(
                f"tokenizer has {self.vocab_size} tokens but the model has {model_vocab_size}: "
                "they do not belong together; pass the tokenizer that came with the model "
                "(--tokenizer PATH)")

    def _bytes_after(self, prev_id: int | None, token_id: int) -> bytes:
        """token_bytes, less the dummy-prefix space when the previous token was BOS."""
        data = self.token_bytes(token_id)
        if self.dummy_prefix and prev_id is not None and prev_id == self.bos_id:
            return data[1:] if data[:1] == b" " else data
        return data

    def _check_id(self, token_id: int) -> int:
        if not 0 <= token_id < self.vocab_size:
            raise TokenizerError(f"token id {token_id} is outside the vocabulary "
                                 f"(0..{self.vocab_size - 1})")
        return token_id


class StreamDecoder:
    """Turns generated ids into text pieces, holding back the bytes of an unfinished
    UTF-8 character until it completes, so a stream never splits a character."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._prev = None

    def push(self, token_id: int) -> str:
        data = self.tokenizer._bytes_after(self._prev, int(token_id))
        self._prev = int(token_id)
        return self._utf8.decode(data)

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)


class SentencePieceTokenizer(Tokenizer):
    """A sentencepiece `tokenizer.model` (ModelProto); encoding is sentencepiece's own."""

    def __init__(self, model_proto: bytes, name: str = "tokenizer.model"):
        try:
            import sentencepiece
        except ImportError:
            raise TokenizerError(f"{name}: reading a sentencepiece model needs the sentencepiece "
                                 "package: pip install sentencepiece") from None
        sp = sentencepiece.SentencePieceProcessor()
        try:
            sp.LoadFromSerializedProto(model_proto)
        except RuntimeError as e:
            raise TokenizerError(f"{name}: not a readable sentencepiece model ({e})") from None
        self._sp = sp
        self.vocab_size = sp.get_piece_size()
        self.bos_id = sp.bos_id() if sp.bos_id() >= 0 else None
        self.eos_id = sp.eos_id() if sp.eos_id() >= 0 else None
        self.add_bos = self.bos_id is not None
        self.dummy_prefix = sp.normalize("a").startswith(SPIECE_SPACE)
        self._ids = {sp.id_to_piece(i): i for i in range(self.vocab_size)}
        self._bytes = [self._piece_bytes(i) for i in range(self.vocab_size)]

    def _piece_bytes(self, i: int) -> bytes:
        sp, piece = self._sp, self._sp.id_to_piece(i)
        if sp.is_control(i):
            return b""
        if sp.is_byte(i):
            return bytes([int(piece[3:5], 16)])
        if sp.is_unknown(i):
            return " \u2047 ".encode()           # what sentencepiece itself decodes it to
        return piece.replace(SPIECE_SPACE, " ").encode("utf-8")

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        bos = self.add_bos if add_bos is None else add_bos
        return ([self.bos_id] if bos and self.bos_id is not None else []) + self._sp.encode(text)

    def token_bytes(self, token_id: int) -> bytes:
        return self._bytes[self._check_id(token_id)]

    def token_id(self, piece: str) -> int | None:
        return self._ids.get(piece)


class Llama2cTokenizer(Tokenizer):
    """llama2.c's tokenizer: pieces with scores (spaces as ' ', unknown characters spelled as
    `<0xXX>` byte pieces). Encoding is run.c's: a space is prepended to the text, each
    character becomes its piece (or its byte pieces), then the adjacent pair whose merged
    piece scores highest is merged, leftmost on ties, until no pair merges. As in
    sentencepiece, byte pieces and <unk>/<s>/</s> are never merge results. A heap finds the
    best pair, which gives the same merges as run.c's rescans in O(n log n)."""
    unk_id, bos_id, eos_id = 0, 1, 2
    dummy_prefix = True

    def __init__(self, pieces: list[bytes], scores: list[float]):
        self.vocab_size = len(pieces)
        self._scores = list(scores)
        self._bytes, self._ids, self._merges, self._byte_ids = [], {}, {}, {}
        for i, piece in enumerate(pieces):
            text = piece.decode("utf-8", errors="surrogateescape")
            byte = BYTE_PIECE.fullmatch(piece)
            if i in (self.bos_id, self.eos_id):
                self._bytes.append(b"")
                text = text.strip("\n")
            elif byte:
                self._bytes.append(bytes([int(byte.group(1), 16)]))
                self._byte_ids.setdefault(self._bytes[-1][0], i)
            else:
                self._bytes.append(piece)
                if i != self.unk_id:
                    self._merges.setdefault(text, i)
            self._ids.setdefault(text, i)

    @classmethod
    def from_bytes(cls, data: bytes, name: str = "tokenizer.bin",
                   vocab_size: int | None = None) -> "Llama2cTokenizer":
        """Parse a tokenizer.bin: u32 max_token_length, then (f32 score, u32 length, bytes)."""
        if len(data) < 4:
            raise TokenizerError(f"{name}: {len(data)} bytes is too short for a tokenizer.bin")
        (max_len,) = struct.unpack_from("<I", data)
        pieces, scores, off = [], [], 4
        while off < len(data) and (vocab_size is None or len(pieces) < vocab_size):
            n = struct.unpack_from("<I", data, off + 4)[0] if off + 8 <= len(data) else None
            if n is None or off + 8 + n > len(data):
                raise TokenizerError(f"{name}: truncated: token {len(pieces)} at byte {off} "
                                     f"runs past the end of the file ({len(data)} bytes)")
            if n > max_len:
                raise TokenizerError(f"{name}: token {len(pieces)} claims {n} bytes, more than "
                                     f"the max_token_length {max_len} of the header (corrupt)")
            (score,) = struct.unpack_from("<f", data, off)
            pieces.append(data[off + 8:off + 8 + n])
            scores.append(score)
            off += 8 + n
        if vocab_size is not None and (len(pieces) != vocab_size or off != len(data)):
            raise TokenizerError(f"{name}: holds {len(pieces)} tokens"
                                 f"{' and trailing data' if off != len(data) else ''}, the "
                                 f"model has {vocab_size}: pass the model's own tokenizer.bin")
        if len(pieces) <= cls.eos_id:
            raise TokenizerError(f"{name}: holds {len(pieces)} tokens, too few for <unk> <s> </s>")
        return cls(pieces, scores)

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        ids = [self.bos_id] if (self.add_bos if add_bos is None else add_bos) else []
        if not text:
            return ids
        texts, symbols = [], []           # merge text (None: never merges) and id per symbol
        for ch in " " + text:
            i = self._merges.get(ch)
            if i is not None:
                texts.append(ch)
                symbols.append(i)
            elif self._byte_ids:
                raw = ch.encode("utf-8", errors="replace")
                texts += [None] * len(raw)
                symbols += [self._byte_ids.get(b, self.unk_id) for b in raw]
            else:
                texts.append(None)
                symbols.append(self.unk_id)
        return ids + self._merge(texts, symbols)

    def _merge(self, texts: list, symbols: list[int]) -> list[int]:
        nxt = list(range(1, len(symbols))) + [-1]
        prev = list(range(-1, len(symbols) - 1))
        heap = []

        def consider(i):
            j = nxt[i] if i >= 0 else -1
            if j >= 0 and texts[i] is not None and texts[j] is not None:
                merged = self._merges.get(texts[i] + texts[j])
                if merged is not None:
                    heapq.heappush(heap, (-self._scores[merged], i, texts[i], texts[j], merged))

        for i in range(len(symbols) - 1):
            consider(i)
        while heap:
            _, i, left, right, merged = heapq.heappop(heap)
            j = nxt[i]
            if j < 0 or texts[i] != left or texts[j] != right:
                continue                                   # a pair that no longer exists
            texts[i], symbols[i], texts[j] = left + right, merged, None
            nxt[i] = nxt[j]
            if nxt[j] >= 0:
                prev[nxt[j]] = i
            consider(prev[i])
            consider(i)
        out, i = [], 0
        while i >= 0:
            out.append(symbols[i])
            i = nxt[i]
        return out

    def token_bytes(self, token_id: int) -> bytes:
        return self._bytes[self._check_id(token_id)]

    def token_id(self, piece: str) -> int | None:
        return self._ids.get(piece)


def load_tokenizer(path, vocab_size: int | None = None) -> Tokenizer:
    """A `tokenizer.json` (by its name), or a sentencepiece `tokenizer.model` or a llama2.c
    `tokenizer.bin`, told apart by content:
    a tokenizer.bin's records must tile the file exactly, which a ModelProto's bytes never do.
    vocab_size, when known, is the model's: a tokenizer.bin must then hold exactly that many
    tokens (the file itself does not say), and any tokenizer must fit the model."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise TokenizerError(f"{path} is a directory; pass its tokenizer.model or tokenizer.bin")
    if path.endswith(".json"):
        from .hf import tokenizer_config
        from .hf_tokenizer import load_tokenizer_json
        tokenizer = load_tokenizer_json(path, tokenizer_config(os.path.dirname(path)))
    else:
        tokenizer = _load_binary(path, vocab_size)
    if vocab_size is not None:
        tokenizer.check_vocab(vocab_size)
    return tokenizer


def _load_binary(path: str, vocab_size: int | None) -> Tokenizer:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise TokenizerError(f"{path}: cannot read the tokenizer ({e.strerror})") from None
    if not data:
        raise TokenizerError(f"{path}: the tokenizer file is empty")
    try:
        return Llama2cTokenizer.from_bytes(data, path, vocab_size)
    except TokenizerError as bin_error:
        try:
            return SentencePieceTokenizer(data, path)
        except TokenizerError:
            raise TokenizerError(f"{bin_error}; nor is it a sentencepiece model: pass the "
                                 "model's tokenizer.model or tokenizer.bin") from None
