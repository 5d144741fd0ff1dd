"""cuda:triton's one-kernel decode pass (decode_pass.py) against transformers.

Needs a Hopper GPU; elsewhere the module skips. The reference is a random
LlamaForCausalLM whose weights are rounded to bf16, run in float32 on the CPU; polyllama
prefills with the composed ops, then every decode step runs the one kernel.
"""
from __future__ import annotations

import numpy as np
import pytest

import refmodel

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from polyllama import DeviceSpec                                             # noqa: E402
from polyllama.model import Model                                            # noqa: E402
from polyllama.plugins.cuda_triton import decode_pass                        # noqa: E402
from polyllama.plugins.cuda_triton.device import TritonDevice, interpreting  # noqa: E402

if interpreting() or not torch.cuda.is_available():
    pytest.skip("the one-kernel decode pass needs a GPU", allow_module_level=True)
if torch.cuda.get_device_capability()[0] != 9:
    pytest.skip("the one-kernel decode pass needs a Hopper GPU", allow_module_level=True)

TOL = 0.02           # of the largest logit: bf16 activations staged for every matrix


def hf_model(kv_heads: int, tied: bool, ctx: int):
    from transformers import LlamaConfig
    cfg = LlamaConfig(hidden_size=512, intermediate_size=1280, num_hidden_layers=3,
                      num_attention_heads=8, num_key_value_heads=kv_heads, vocab_size=1000,
                      max_position_embeddings=ctx, rms_norm_eps=1e-5, rope_theta=10000.0,
                      tie_word_embeddings=tied, attn_implementation="eager")
    hf = refmodel.random_llama(cfg, seed=3, scale=0.05)
    with torch.no_grad():
        for p in hf.parameters():
            p.copy_(p.bfloat16().float())
    return hf


@pytest.fixture(scope="module")
def dev():
    d = TritonDevice(DeviceSpec("cuda", "triton", 0), 0)
    d.backend_id = "cuda_triton"
    return d


@pytest.mark.parametrize("kv_heads,tied,prompt_len,steps", [
    (2, True, 7, 6),          # one split
    (8, False, 300, 6),       # several splits, one query head per kv head
    (2, False, 4150, 3),      # capped splits, the last ones empty
])
def test_decode_pass_logits_match_transformers(dev, kv_heads, tied, prompt_len, steps):
    ctx = prompt_len + steps + 1
    hf = hf_model(kv_heads, tied, ctx)
    ckpt = refmodel.reference_checkpoint(hf, max_seq_len=ctx)
    model = Model.build(ckpt, dev, "bfloat16", ctx=ctx)
    assert decode_pass.unsupported(model) is None
    rng = np.random.default_rng(prompt_len)
    ids = [int(t) for t in rng.integers(0, 1000, prompt_len + steps)]
    want = refmodel.hf_logits(hf, ids)
    model.prefill(ids[:prompt_len], 0)
    for i in range(prompt_len, prompt_len + steps):
        model.decode(i, token=ids[i])
        got = model.read_logits()
        err = np.max(np.abs(got - want[i])) / np.max(np.abs(want[i]))
        assert err < TOL, f"position {i}: error {err:.3g} of the largest logit"
    assert model in decode_pass._PASSES, "the decode steps did not run the one kernel"


def test_decode_pass_greedy_tokens_follow_transformers(dev):
    """Greedy decoding through replayed graphs: the tokens equal transformers' where its
    top two logits are apart by more than the bf16 tolerance."""
    hf = hf_model(2, False, 64)
    model = Model.build(refmodel.reference_checkpoint(hf, max_seq_len=64), dev, "bfloat16")
    got = refmodel.polyllama_greedy(model, refmodel.PROMPT, 24)
    want = refmodel.hf_logits(hf, refmodel.PROMPT + got[:-1])[len(refmodel.PROMPT) - 1:]
    assert len(set(got)) > 4, "output too repetitive to prove anything"
    for i, (token, row) in enumerate(zip(got, want)):
        top2 = np.sort(row)[-2:]
        if top2[1] - top2[0] > TOL * np.max(np.abs(row)):
            assert token == int(np.argmax(row)), f"step {i}"


def test_models_that_do_not_qualify_say_why(dev):
    hf = refmodel.make_hf_model("gqa-tied", seed=1)
    model = Model.build(refmodel.reference_checkpoint(hf), dev, "bfloat16")
    assert "divisible" in decode_pass.unsupported(model)
    fp32 = Model.build(refmodel.reference_checkpoint(hf_model(2, True, 16), max_seq_len=16),
                       dev, "float32")
    assert "bf16" in decode_pass.unsupported(fp32)
