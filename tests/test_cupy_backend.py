"""cuda:cupy beyond the per-kernel suite (tests/test_backend_kernels.py runs that on every
backend): what it says without a driver, and the whole model on a GPU against
transformers."""
import ctypes

import numpy as np
import pytest

import refmodel

cupy = pytest.importorskip("cupy")

from polyllama import DeviceError, get_device, get_registry  # noqa: E402
from polyllama.generate import SamplingParams, TokenLoop     # noqa: E402
from polyllama.model import Model                            # noqa: E402


reason = get_registry().backends["cuda_cupy"].unavailable_reason()
gpu = pytest.mark.skipif(reason is not None, reason=f"cuda:cupy unavailable: {reason}")


def test_without_a_driver_the_reason_says_so():
    """Not CuPy's "driver version is insufficient", which sends users after a driver update."""
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        assert reason.startswith("no NVIDIA driver (libcuda.so.1 cannot be loaded)"), reason
        with pytest.raises(DeviceError, match="no NVIDIA driver"):
            get_device("cuda:cupy")
    else:
        pytest.skip("an NVIDIA driver is present here")


@gpu
@pytest.mark.parametrize("name", sorted(refmodel.CONFIGS))
def test_model_greedy_matches_transformers_fp32(name):
    """Prefill (cuBLAS), then decode steps replayed as a CUDA graph, argmax on the device."""
    hf = refmodel.make_hf_model(name, seed=1)
    model = Model.build(refmodel.reference_checkpoint(hf), get_device("cuda:cupy"), "float32")
    refmodel.assert_greedy_matches(model, hf, steps=32)


@gpu
@pytest.mark.parametrize("name", sorted(refmodel.CONFIGS))
def test_model_int8_greedy_matches_transformers_on_int8_weights(name):
    """--quant int8: the q8_0 GEMV in replayed decode steps, prefill through the dequantized
    weights and cuBLAS."""
    hf = refmodel.make_hf_model(name, seed=1)
    model = Model.build(refmodel.reference_checkpoint(hf), get_device("cuda:cupy"), "float32",
                        quant="int8")
    assert model.fmt == "q8_0"
    refmodel.assert_greedy_matches(model, refmodel.int8_hf_model(name, seed=1), steps=32)


@gpu
@pytest.mark.parametrize("settings", [(1.0, 0, 1.0, 0.0), (0.9, 0, 0.9, 0.0),
                                      (0.8, 40, 0.95, 0.05)])
def test_seeded_sampling_matches_cpu_numpy_fp32(settings):
    """Sampled decode steps (replayed CUDA graphs, the draw on the device) draw the tokens
    cpu:numpy draws on the host with the same seed. A random model's logits are flat, so
    without a top-k the draws go to the whole-vocabulary searches."""
    hf = refmodel.make_hf_model("gqa-tied", seed=3, vocab=5000)
    ckpt = refmodel.reference_checkpoint(hf)
    params = SamplingParams(*settings, seed=7)
    model = Model.build(ckpt, get_device("cuda:cupy"), "float32")
    assert model.can_sample_on_device()
    want = list(TokenLoop(Model.build(ckpt, get_device("cpu:numpy")), params).run([1, 4, 9], 8))
    assert list(TokenLoop(model, params).run([1, 4, 9], 8)) == want


@gpu
def test_model_bf16_logits_close_to_transformers():
    """bf16 weights and activations: the first decode logits within bf16 rounding."""
    hf = refmodel.make_hf_model("gqa-tied", seed=1)
    model = Model.build(refmodel.reference_checkpoint(hf), get_device("cuda:cupy"), "bfloat16")
    model.prefill(refmodel.PROMPT, 0)
    got = model.read_logits()
    want = refmodel.hf_logits(hf, refmodel.PROMPT)[-1]
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()


@gpu
def test_token_loop_greedy_matches_transformers_fp32():
    """The engine's token loop: it queues each decode step before reading the id the step
    before picked, from that step's own slot, on a second stream."""
    hf = refmodel.make_hf_model("gqa-tied", seed=1)
    model = Model.build(refmodel.reference_checkpoint(hf), get_device("cuda:cupy"), "float32")
    assert model.reads_ahead()
    refmodel.assert_token_loop_matches(model, hf)
