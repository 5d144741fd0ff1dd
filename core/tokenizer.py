"""Tokenizer interface, streaming detokenization, and the readers for sentencepiece
`tokenizer.model` and llama2.c `tokenizer.bin`."""
from __future__ import annotations

import codecs

from .errors import TokenizerError


class Tokenizer:
    """Text <-> token ids. Subclasses set the attributes and implement the three methods."""
    vocab_size: int
    bos_id: int | None = None
    eos_id: int | None = None
    add_bos: bool = True                  # prepend BOS when encoding a prompt

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        raise NotImplementedError

    def token_bytes(self, token_id: int) -> bytes:
        """The exact bytes this token contributes to the output text ('' for control tokens)."""
        raise NotImplementedError

    def token_id(self, piece: str) -> int | None:
        """The id of a piece spelled as in the vocabulary (e.g. '<|im_end|>'), or None."""
        raise NotImplementedError

    def decode(self, ids) -> str:
        return b"".join(self.token_bytes(int(i)) for i in ids).decode("utf-8", errors="replace")

    def check_vocab(self, model_vocab_size: int) -> None:
        if self.vocab_size > model_vocab_size or self.vocab_size < model_vocab_size - 512:
            raise TokenizerError(
                f"tokenizer has {self.vocab_size} tokens but the model has {model_vocab_size}: "
                "they do not belong together; pass the tokenizer that came with the model "
                "(--tokenizer PATH)")


class StreamDecoder:
    """Turns generated ids into text pieces, holding back the bytes of an unfinished
    UTF-8 character until it completes, so a stream never splits a character."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        return self._utf8.decode(self.tokenizer.token_bytes(int(token_id)))

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)
