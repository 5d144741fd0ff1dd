"""Sampling: the host sampler follows the reference; top-k/top-p/min-p restrict the support;
a seed makes a run reproducible."""
import numpy as np
import pytest

import refmodel
from polyllama import UsageError, get_device, reference
from polyllama.generate import SamplingParams, TokenLoop, host_sample
from polyllama.model import Model


def test_reference_support_on_a_constructed_distribution():
    # probabilities 0.4, 0.3, 0.15, 0.1, 0.05 (shuffled ids)
    p = np.array([0.1, 0.4, 0.05, 0.3, 0.15])
    logits = np.log(p)
    support = lambda **kw: set(np.flatnonzero(reference.sampling_probs(logits, 1.0, **kw)))
    assert support() == {0, 1, 2, 3, 4}
    assert support(top_k=2) == {1, 3}
    assert support(top_p=0.7) == {1, 3}                 # 0.4 + 0.3 reaches 0.7
    assert support(top_p=0.71) == {1, 3, 4}
    assert support(min_p=0.5) == {1, 3}                 # >= 0.5 * 0.4
    assert support(top_k=3, top_p=0.5) == {1, 3}        # 0.4/0.85 < 0.5 <= 0.7/0.85
    probs = reference.sampling_probs(logits, 1.0, top_k=2)
    assert probs[1] == pytest.approx(0.4 / 0.7) and probs[3] == pytest.approx(0.3 / 0.7)
    assert set(np.flatnonzero(reference.sampling_probs(logits, 0.0))) == {1}


def test_reference_sample_draws_follow_the_probabilities():
    logits = np.log(np.array([0.1, 0.4, 0.05, 0.3, 0.15]))
    us = (np.arange(10000) + 0.5) / 10000
    counts = np.bincount([reference.sample(logits, 1.0, 3, 1.0, 0.0, u) for u in us],
                         minlength=5) / len(us)
    np.testing.assert_allclose(counts, [0, 0.4 / 0.85, 0, 0.3 / 0.85, 0.15 / 0.85], atol=1e-3)


@pytest.mark.parametrize("top_k,top_p,min_p,temp", [(0, 1.0, 0.0, 1.0), (40, 0.95, 0.05, 0.8),
                                                     (5, 0.5, 0.0, 1.5), (1, 1.0, 0.0, 1.0),
                                                     (200, 0.9, 0.1, 0.7)])
def test_host_sampler_equals_reference(top_k, top_p, min_p, temp):
    rng = np.random.default_rng(7)
    for _ in range(20):
        logits = rng.standard_normal(300) * 3
        logits[rng.integers(0, 300, 10)] = logits.max()          # ties at the top
        p = SamplingParams(temperature=temp, top_k=top_k, top_p=top_p, min_p=min_p)
        for u in rng.random(10):
            assert host_sample(logits, p, u) == reference.sample(logits, temp, top_k, top_p,
                                                                 min_p, u)


def test_repetition_penalty():
    out = reference.repetition_penalty(np.array([2.0, -2.0, 1.0]), [0, 1, 0], 2.0)
    np.testing.assert_allclose(out, [1.0, -4.0, 1.0])


@pytest.mark.parametrize("bad", [dict(temperature=-1), dict(top_p=0), dict(top_p=1.5),
                                 dict(min_p=1), dict(top_k=-1), dict(repeat_penalty=0)])
def test_invalid_sampling_parameters(bad):
    with pytest.raises(UsageError):
        SamplingParams(**bad).validated()


@pytest.fixture(scope="module")
def model():
    hf = refmodel.make_hf_model("gqa-tied", seed=2)
    return Model.build(refmodel.reference_checkpoint(hf), get_device("cpu:numpy"))


@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_seeded_sampling_is_reproducible(model, penalty):
    params = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0,
                            repeat_penalty=penalty, seed=1234)
    run = lambda p: list(TokenLoop(model, p).run([1, 4, 9], 24))
    first = run(params)
    assert run(params) == first
    other = run(SamplingParams(**{**params.__dict__, "seed": 99}))
    assert other != first                   # a different seed draws differently
    assert len(set(first)) > 3
