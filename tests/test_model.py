"""The executor on cpu:numpy against Hugging Face transformers (an independent model)."""
import numpy as np
import pytest

import refmodel
from polyllama import ContextLengthError, get_device
from polyllama import model as model_mod
from polyllama.model import Model

PROMPT = refmodel.PROMPT


@pytest.fixture(scope="module", params=sorted(refmodel.CONFIGS))
def pair(request):
    hf = refmodel.make_hf_model(request.param, seed=1)
    return hf, refmodel.reference_checkpoint(hf)


def test_prefill_logits_match_transformers(pair):
    hf, ckpt = pair
    model = Model.build(ckpt, get_device("cpu:numpy"))
    ref = refmodel.hf_logits(hf, PROMPT)[-1]
    model.prefill(PROMPT, 0)
    got = model.read_logits()
    assert got.shape == ref.shape
    assert np.max(np.abs(got - ref)) <= 1e-4 * np.max(np.abs(ref))


def test_greedy_32_tokens_match_transformers(pair):
    hf, ckpt = pair
    model = Model.build(ckpt, get_device("cpu:numpy"))
    refmodel.assert_greedy_matches(model, hf, PROMPT, 32)


def test_decode_logits_match_transformers_at_every_step(pair):
    hf, ckpt = pair
    model = Model.build(ckpt, get_device("cpu:numpy"))
    ids = list(PROMPT)
    model.prefill(ids, 0)
    for step in range(6):
        token = int(np.argmax(model.read_logits()))
        ids.append(token)
        model.decode(len(ids) - 1, token=token)
        ref = refmodel.hf_logits(hf, ids)[-1]
        assert np.max(np.abs(model.read_logits() - ref)) <= 1e-4 * np.max(np.abs(ref))


def test_chunked_prefill_and_continued_prefill_match(pair, monkeypatch):
    hf, ckpt = pair
    ids = list(np.random.default_rng(3).integers(0, ckpt.config.vocab_size, 23))
    ref = refmodel.hf_logits(hf, ids)[-1]
    monkeypatch.setattr(model_mod, "PREFILL_CHUNK", 5)        # 23 tokens = 5 chunks, last of 3
    model = Model.build(ckpt, get_device("cpu:numpy"))
    model.prefill(ids, 0)
    assert np.max(np.abs(model.read_logits() - ref)) <= 1e-4 * np.max(np.abs(ref))
    model.prefill(ids[12:], 12)                                # cache rows 0..11 reused
    assert np.max(np.abs(model.read_logits() - ref)) <= 1e-4 * np.max(np.abs(ref))


def test_context_overflow_is_a_clear_error(pair):
    _, ckpt = pair
    model = Model.build(ckpt, get_device("cpu:numpy"), ctx=8)
    with pytest.raises(ContextLengthError, match="context of 8"):
        model.prefill(list(range(1, 10)), 0)
