"""Sampling parameters, the host sampler, and the token loop (prefill, then decode steps).

Greedy and plain sampling run on the device when the backend can (one token id crosses to
the host per step); a repetition penalty, or a backend without a `sample` kernel, samples on
the host from the downloaded logits. Both follow reference.sampling_probs exactly.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from . import reference
from .errors import UsageError


@dataclass
class SamplingParams:
    temperature: float = 0.8          # 0 = greedy
    top_k: int = 40                   # 0 = whole vocabulary
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0       # 1 = off
    repeat_last_n: int = 64
    seed: int | None = None

    def validated(self) -> "SamplingParams":
        checks = [(self.temperature >= 0, "temperature must be >= 0"),
                  (self.top_k >= 0, "top-k must be >= 0"),
                  (0 < self.top_p <= 1, "top-p must be in (0, 1]"),
                  (0 <= self.min_p < 1, "min-p must be in [0, 1)"),
                  (self.repeat_penalty > 0, "repeat-penalty must be > 0"),
                  (self.repeat_last_n >= 0, "repeat-last-n must be >= 0")]
        for ok, msg in checks:
            if not ok:
                raise UsageError(msg)
        return self

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


def host_sample(logits: np.ndarray, p: SamplingParams, u: float) -> int:
    """reference.sample, computed on the top_k candidates only when top_k > 0."""
    logits = np.asarray(logits, dtype=np.float64)
    if p.top_k <= 0 or p.top_k >= len(logits):
        return reference.sample(logits, p.temperature, 0, p.top_p, p.min_p, u)
    cand = np.argpartition(-logits, p.top_k - 1)[:p.top_k]
    # ties at the cut must resolve like the reference's stable sort: lowest ids first
    kth = logits[cand].min()
    above = np.flatnonzero(logits > kth)
    at = np.flatnonzero(logits == kth)[:p.top_k - len(above)]
    cand = np.sort(np.concatenate([above, at]))    # id order, so local ties sort as global ones
    return int(cand[reference.sample(logits[cand], p.temperature, 0, p.top_p, p.min_p, u)])


@dataclass
class GenStats:
    prompt_tokens: int = 0
    prefill_tokens: int = 0          # prompt tokens actually computed (cache reuse skips some)
    generated: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0            # wall time from the first generated token to the last
    finish_reason: str = ""

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prefill_tokens / self.prefill_s if self.prefill_s else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        # the first token comes from prefill; decode steps produce the rest
        steps = max(self.generated - 1, 0)
        return steps / self.decode_s if self.decode_s else 0.0


@dataclass
class TokenLoop:
    """Yields generated token ids; stops at a stop id, at max_new, or when the context is full."""
    model: object
    params: SamplingParams
    stop_ids: set = field(default_factory=set)
    stats: GenStats = field(default_factory=GenStats)
    fed: int = 0                      # leading tokens of prompt + output whose KV is cached

    def run(self, prompt_ids, max_new: int, reuse: int = 0):
        """prompt_ids: the whole prompt; its first `reuse` tokens are already in the cache."""
        m, p = self.model, self.params
        rng = np.random.default_rng(p.seed)
        history = list(prompt_ids)
        self.stats = st = GenStats(prompt_tokens=len(prompt_ids))
        self.fed = reuse
        if max_new <= 0:
            st.finish_reason = "length"
            return
        mode = self._mode()
        if mode == "sample":
            m.setup_sampling(p.temperature, p.top_k, p.top_p, p.min_p)
        t0 = time.perf_counter()
        st.prefill_tokens = len(prompt_ids) - reuse
        m.prefill(prompt_ids[reuse:], reuse)
        self.fed = len(prompt_ids)
        token = self._pick(mode, rng, history)
        st.prefill_s = time.perf_counter() - t0
        pos = len(prompt_ids)
        # on an asynchronous device the next step is queued before this step's token is read,
        # so the device never waits for the host; a step queued past a stop is simply unused
        ahead = mode != "logits" and m.reads_ahead()
        pending = None
        t_first = time.perf_counter()
        while True:
            st.generated += 1
            history.append(token)
            yield token
            if token in self.stop_ids:
                st.finish_reason = "stop"
                break
            if st.generated >= max_new:
                st.finish_reason = "length"
                break
            if pos + 1 > m.ctx:
                st.finish_reason = "context"
                break
            if mode == "logits":
                m.decode(pos, token=token, pick="logits")
                token = self._host_pick(rng, history)
            else:                          # the picked id is already in the device buffer
                pending = pending or self._launch(mode, rng, pos)
                following = None
                if ahead and st.generated + 1 < max_new and pos + 2 <= m.ctx:
                    following = self._launch(mode, rng, pos + 1)
                token = int(pending()[0])
                pending = following
            self.fed = pos = pos + 1
            st.decode_s = time.perf_counter() - t_first

    def _launch(self, mode, rng, pos):
        """Queue the decode step at pos; returns a callable giving the id it picks."""
        if mode == "sample":
            self.model.set_uniform(rng.random())
        self.model.decode(pos, pick=mode)
        return self.model.device.read_async(self.model.picked_id(pos))

    def _mode(self) -> str:
        p = self.params
        if p.repeat_penalty != 1.0:
            return "logits"
        if p.greedy:
            return "argmax"
        return "sample" if self.model.can_sample_on_device() else "logits"

    def _pick(self, mode, rng, history) -> int:
        if mode == "logits":
            return self._host_pick(rng, history)
        if mode == "sample":
            self.model.set_uniform(rng.random())
        return self.model.pick_on_device(mode)

    def _host_pick(self, rng, history) -> int:
        p = self.params
        logits = self.model.read_logits()
        if p.repeat_penalty != 1.0 and p.repeat_last_n:
            logits = reference.repetition_penalty(logits, history[-p.repeat_last_n:],
                                                  p.repeat_penalty)
        if p.greedy:
            return int(np.argmax(logits))
        return host_sample(logits, p, rng.random())
