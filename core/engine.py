"""The user-facing engine: load once, generate many times, stream text, chat with history."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from .errors import ContextLengthError, TokenizerError, UsageError
from .generate import GenStats, SamplingParams, TokenLoop
from .model import Model
from .registry import get_device
from .tokenizer import StreamDecoder, Tokenizer


class StopMatcher:
    """Holds back text that may be the start of a stop string; cuts the text at a match."""

    def __init__(self, stops):
        self.stops = [s for s in stops if s]
        self.pending = ""
        self.hit = False

    def push(self, piece: str) -> str:
        self.pending += piece
        if not self.stops:
            out, self.pending = self.pending, ""
            return out
        cuts = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if cuts:
            self.hit = True
            out, self.pending = self.pending[:min(cuts)], ""
            return out
        keep = 0                              # longest suffix that is a prefix of a stop
        for s in self.stops:
            for n in range(min(len(s) - 1, len(self.pending)), keep, -1):
                if self.pending.endswith(s[:n]):
                    keep = n
                    break
        cut = len(self.pending) - keep
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


class Generation:
    """Iterate to stream text pieces; afterwards .text, .generated_ids and .stats are final."""

    def __init__(self, llm: "LLM", prompt_ids, params, max_tokens, stop, stop_ids):
        self.llm, self.prompt_ids, self.params = llm, list(prompt_ids), params
        if max_tokens is None or max_tokens < 0:          # no limit but the context
            max_tokens = llm.model.ctx
        self.max_tokens, self.stop, self.stop_ids = max_tokens, list(stop), set(stop_ids)
        self.generated_ids: list[int] = []
        self.text = ""
        self.stats = GenStats()
        self._done = False
        self.on_done = None           # called with self once the generation has ended

    def __iter__(self):
        if self._done:
            yield from ()
            return
        llm, tok = self.llm, self.llm.tokenizer
        reuse = llm.reusable_prefix(self.prompt_ids)
        loop = TokenLoop(llm.model, self.params, self.stop_ids)
        decoder = StreamDecoder(tok) if tok is not None else None
        matcher = StopMatcher(self.stop)
        llm.cached_ids = []                              # the cache is rewritten from here on
        try:
            for token in loop.run(self.prompt_ids, self.max_tokens, reuse):
                self.generated_ids.append(token)
                if decoder is None or token in self.stop_ids:
                    continue
                piece = matcher.push(decoder.push(token))
                self.text += piece
                if piece:
                    yield piece
                if matcher.hit:
                    loop.stats.finish_reason = "stop"
                    break
            if decoder is not None and not matcher.hit:
                piece = matcher.push(decoder.flush()) + matcher.flush()
                self.text += piece
                if piece:
                    yield piece
        finally:
            self.stats = loop.stats
            llm.cached_ids = (self.prompt_ids + self.generated_ids)[:loop.fed]
            self._done = True
            if self.on_done is not None:
                self.on_done(self)

    def run(self) -> "Generation":
        for _ in self:
            pass
        return self

    def to_dict(self) -> dict:
        s, llm = self.stats, self.llm
        return {"prompt_ids": self.prompt_ids, "generated_ids": self.generated_ids,
                "text": self.text, "finish_reason": s.finish_reason,
                "device": str(llm.device.spec), "dtype": llm.model.dtype,
                "weight_format": llm.model.fmt, "model": llm.model_path,
                "prompt_tokens": s.prompt_tokens, "prefill_tokens": s.prefill_tokens,
                "prefill_tokens_per_s": round(s.prefill_tokens_per_s, 2),
                "decode_tokens_per_s": round(s.decode_tokens_per_s, 2),
                "peak_memory_bytes": llm.device.memory().get("peak"),
                "seed": self.params.seed}


class LLM:
    """Load a model once on a device; generate and chat many times.

    model: a checkpoint path (llama2.c .bin, GGUF, Hugging Face directory) or a model alias
    known to `polyllama pull`; None = the default demo model.
    """

    def __init__(self, model: str | None = None, *, device: str = "auto",
                 tokenizer: str | None = None, dtype: str | None = None,
                 ctx_size: int | None = None, quant: str | None = None, verbose: bool = True):
        from .hub import resolve_model
        from .load import load_checkpoint
        t0 = time.perf_counter()
        self.model_path = str(resolve_model(model, verbose=verbose))
        ckpt = load_checkpoint(self.model_path)
        self.tokenizer: Tokenizer | None = self._tokenizer(ckpt, tokenizer)
        if self.tokenizer is not None:
            self.tokenizer.check_vocab(ckpt.config.vocab_size)
        self.chat_template = ckpt.chat_template
        # llama2.c-family models are trained with BOS between documents: a story ends there
        self.bos_ends_text = ckpt.format.startswith(("llama2c", "kuiper"))
        self.device = get_device(device)
        self.model = Model.build(ckpt, self.device, dtype=dtype, ctx=ctx_size, quant=quant)
        self.cached_ids: list[int] = []       # tokens whose keys/values are in the cache
        self.load_seconds = time.perf_counter() - t0
        if verbose:
            m = self.model
            print(f"polyllama: device {self.device.spec} ({self.device.name()}), "
                  f"{m.dtype} {m.fmt} weights {m.weight_bytes / 2**20:.0f} MiB, "
                  f"KV cache {m.kv_bytes / 2**20:.0f} MiB for {m.ctx} tokens; "
                  f"{ckpt.format} model {self.model_path} loaded in {self.load_seconds:.1f} s",
                  file=sys.stderr)

    @staticmethod
    def _tokenizer(ckpt, path) -> Tokenizer | None:
        from .tokenizer import load_tokenizer
        vocab = ckpt.config.vocab_size
        if path:
            return load_tokenizer(path, vocab)
        if ckpt.tokenizer is not None:
            return ckpt.tokenizer
        here = Path(ckpt.path)
        folder = here if here.is_dir() else here.parent
        for name in ("tokenizer.model", "tokenizer.bin"):
            if (folder / name).is_file():
                return load_tokenizer(str(folder / name), vocab)
        return None

    # ------------------------------------------------------------------ prompts
    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        if self.tokenizer is None:
            raise TokenizerError("this model has no tokenizer: pass --tokenizer PATH "
                                 "(tokenizer.model or tokenizer.bin), or token ids with "
                                 "--prompt-ids")
        return self.tokenizer.encode(text, add_bos=add_bos)

    def check_ids(self, ids) -> list[int]:
        V = self.model.config.vocab_size
        bad = [i for i in ids if not 0 <= int(i) < V]
        if bad:
            raise UsageError(f"token ids {bad[:5]} are outside the vocabulary [0, {V})")
        if not ids:
            raise UsageError("the prompt is empty and the tokenizer has no BOS token to start "
                             "from; give a prompt")
        if len(ids) >= self.model.ctx:
            raise ContextLengthError(
                f"the prompt has {len(ids)} tokens but the context holds {self.model.ctx}; "
                f"shorten the prompt or raise --ctx-size (the model was trained for "
                f"{self.model.config.max_seq_len})")
        return [int(i) for i in ids]

    def reusable_prefix(self, ids) -> int:
        """How many leading prompt tokens already sit in the KV cache (at least one token is
        always recomputed, for its logits)."""
        n = 0
        for a, b in zip(self.cached_ids, ids):
            if a != b:
                break
            n += 1
        return min(n, len(ids) - 1)

    def stop_ids(self, ignore_eos: bool, extra=()) -> set[int]:
        if ignore_eos:
            return set()
        ids = set(extra)
        tok = self.tokenizer
        if tok is not None and tok.eos_id is not None:
            ids.add(tok.eos_id)
        if tok is not None and self.bos_ends_text and tok.bos_id is not None:
            ids.add(tok.bos_id)
        return ids

    # ------------------------------------------------------------------ generation
    def generate(self, prompt: str | None = None, *, prompt_ids=None,
                 max_tokens: int | None = 256,
                 stop=(), ignore_eos: bool = False, params: SamplingParams | None = None,
                 **sampling) -> Generation:
        """A streaming generation: iterate it for text pieces, or call .run().
        max_tokens None or negative: until a stop token or the context is full.
        Sampling keywords: temperature, top_k, top_p, min_p, repeat_penalty, seed."""
        params = (params or SamplingParams(**sampling)).validated()
        if prompt_ids is None:
            if prompt:
                prompt_ids = self.encode(prompt)
            else:
                bos = self.tokenizer.bos_id if self.tokenizer is not None else None
                prompt_ids = [bos] if bos is not None else []
        return Generation(self, self.check_ids(list(prompt_ids)), params, max_tokens, stop,
                          self.stop_ids(ignore_eos))

    def chat(self, system: str | None = None, template: str | None = None) -> "ChatSession":
        """A multi-turn conversation; template names a built-in one (chatml, llama3, llama2)
        instead of the model's own."""
        return ChatSession(self, system=system, template=template)


class ChatSession:
    """Keeps the history; each turn re-renders the whole conversation with the chat
    template, and the KV cache skips the tokens already computed."""

    def __init__(self, llm: LLM, system: str | None = None, template: str | None = None):
        from .chat import ChatFormat
        if llm.tokenizer is None:
            raise TokenizerError("chat needs a tokenizer: pass --tokenizer PATH")
        self.llm, self.system = llm, system
        self.format = ChatFormat(llm.tokenizer, llm.chat_template, template)
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def send(self, text: str, *, max_tokens: int = 512, stop=(), ignore_eos: bool = False,
             params: SamplingParams | None = None, **sampling):
        """Stream the assistant's answer to one user message (iterate the result)."""
        params = (params or SamplingParams(**sampling)).validated()
        user = {"role": "user", "content": text}
        ids = self.llm.check_ids(self.format.encode(self.messages + [user]))
        gen = Generation(self.llm, ids, params, max_tokens, stop,
                         self.llm.stop_ids(ignore_eos, self.format.stop_ids))
        gen.on_done = lambda g: self.messages.extend(
            [user, {"role": "assistant", "content": g.text}])
        return gen
