"""Hugging Face directories written by transformers' own save_pretrained load back exactly,
and the model built from them matches transformers (logits and greedy tokens)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import refmodel
from polyllama import ModelFormatError
from polyllama.hf import load_hf_dir
from polyllama.load import load_checkpoint



@pytest.fixture(scope="module", params=sorted(refmodel.CONFIGS))
def saved(request, tmp_path_factory):
    """(hf model, single-file dir, sharded dir)."""
    hf = refmodel.make_hf_model(request.param, seed=2)
    root = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(root / "single")
    hf.save_pretrained(root / "sharded", max_shard_size="20KB")
    assert (root / "sharded" / "model.safetensors.index.json").is_file()
    return hf, root / "single", root / "sharded"


@pytest.mark.parametrize("layout", ["single", "sharded"])
def test_every_tensor_equals_the_canonical_weights(saved, layout):
    hf, single, sharded = saved
    ckpt = load_checkpoint(single if layout == "single" else sharded)
    want = refmodel.canonical_weights(hf)
    assert ckpt.format == "safetensors"
    assert sorted(ckpt.tensors) == sorted(want)
    for name, w in want.items():
        np.testing.assert_array_equal(ckpt.tensors[name], w, err_msg=name)
    c, h = ckpt.config, hf.config
    assert (c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.vocab_size,
            c.max_seq_len, c.norm_eps, c.tie_embeddings) == \
        (h.hidden_size, h.intermediate_size, h.num_hidden_layers, h.num_attention_heads,
         h.num_key_value_heads, h.vocab_size, h.max_position_embeddings, h.rms_norm_eps,
         h.tie_word_embeddings)


def test_float32_tensors_are_views_of_the_file(saved):
    ckpt = load_hf_dir(saved[1])
    assert isinstance(ckpt.tensors["layers.0.w2"].base, np.memmap) or \
        isinstance(ckpt.tensors["layers.0.w2"], np.memmap)
    assert not ckpt.tensors["layers.0.w2"].flags.writeable


@pytest.mark.parametrize("layout", ["single", "sharded"])
def test_logits_and_greedy_match_transformers(saved, layout):
    hf, single, sharded = saved
    refmodel.assert_matches_transformers(load_hf_dir(single if layout == "single" else sharded), hf)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_files(tmp_path, dtype):
    half = refmodel.make_hf_model("gqa-tied", seed=3).to(dtype)
    half.save_pretrained(tmp_path)
    ckpt = load_hf_dir(tmp_path)
    for name, w in refmodel.canonical_weights(half).items():  # exact: both widen the same bits
        np.testing.assert_array_equal(np.asarray(ckpt.tensors[name], np.float32), w, name)
    hf = refmodel.make_hf_model("gqa-tied")       # float32 reference (rope tables included)
    hf.load_state_dict({k: v.float() for k, v in half.state_dict().items()})
    refmodel.assert_matches_transformers(ckpt, hf, steps=16)


def test_llama3_rope_scaling_explicit_head_dim_and_theta(tmp_path):
    from transformers import LlamaConfig
    cfg = LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=24, vocab_size=90,
                      max_position_embeddings=256, rms_norm_eps=1e-6, tie_word_embeddings=False,
                      rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0,
                                       "factor": 8.0, "low_freq_factor": 1.0,
                                       "high_freq_factor": 4.0,
                                       "original_max_position_embeddings": 64},
                      attn_implementation="eager")
    hf = refmodel.random_llama(cfg, seed=5)
    hf.save_pretrained(tmp_path)
    ckpt = load_hf_dir(tmp_path)
    assert ckpt.config.hd == 24 and ckpt.config.rope_theta == 500000.0
    assert ckpt.config.rope_scaling["rope_type"] == "llama3"
    prompt = list(np.random.default_rng(0).integers(0, 90, 60))  # past the original context
    refmodel.assert_matches_transformers(ckpt, hf, prompt, steps=8)

    # the same file in the older config.json spelling (rope_theta + rope_scaling) reads the same
    cfg_path = tmp_path / "config.json"
    data = json.loads(cfg_path.read_text())
    rope = data.pop("rope_parameters")
    data["rope_theta"] = rope.pop("rope_theta")
    data["rope_scaling"] = rope
    cfg_path.write_text(json.dumps(data))
    assert load_hf_dir(tmp_path).config == ckpt.config


def test_untied_file_without_lm_head_is_tied(tmp_path):
    from safetensors.numpy import load_file, save_file
    hf = refmodel.make_hf_model("mha-untied", seed=2)
    hf.save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    del tensors["lm_head.weight"]
    save_file(tensors, tmp_path / "model.safetensors")
    ckpt = load_hf_dir(tmp_path)
    assert ckpt.config.tie_embeddings and "output" not in ckpt.tensors


# ---------------------------------------------------------------- bad input


@pytest.fixture
def model_dir(tmp_path):
    refmodel.make_hf_model("gqa-tied").save_pretrained(tmp_path)
    return tmp_path


def edit_config(path, **changes):
    data = json.loads((path / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key)
        else:
            data[key] = value
    (path / "config.json").write_text(json.dumps(data))


def test_missing_config_key(model_dir):
    edit_config(model_dir, hidden_size=None)
    with pytest.raises(ModelFormatError, match="hidden_size"):
        load_hf_dir(model_dir)


def test_not_a_llama(model_dir):
    edit_config(model_dir, architectures=["GPT2LMHeadModel"], model_type="gpt2")
    with pytest.raises(ModelFormatError, match="Llama architecture"):
        load_hf_dir(model_dir)


def test_unsupported_rope_scaling(model_dir):
    edit_config(model_dir, rope_parameters={"rope_type": "yarn", "factor": 4.0,
                                            "rope_theta": 10000.0})
    with pytest.raises(ModelFormatError, match="yarn"):
        load_hf_dir(model_dir)


def test_truncated_weights(model_dir):
    path = model_dir / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ModelFormatError, match="truncated"):
        load_hf_dir(model_dir)


def test_garbage_weights(model_dir):
    (model_dir / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(ModelFormatError, match="not a safetensors file"):
        load_hf_dir(model_dir)


def test_missing_tensor(model_dir):
    from safetensors.numpy import load_file, save_file
    tensors = load_file(model_dir / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, model_dir / "model.safetensors")
    with pytest.raises(ModelFormatError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
        load_hf_dir(model_dir)


def test_missing_weights_and_missing_shard(tmp_path, model_dir):
    (model_dir / "model.safetensors").unlink()
    with pytest.raises(ModelFormatError, match="no model.safetensors"):
        load_hf_dir(model_dir)
    refmodel.make_hf_model("gqa-tied").save_pretrained(tmp_path / "s", max_shard_size="20KB")
    next((tmp_path / "s").glob("model-00002-*.safetensors")).unlink()
    with pytest.raises(ModelFormatError, match="shard .* missing"):
        load_hf_dir(tmp_path / "s")


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(ModelFormatError, match="cannot open"):
        load_checkpoint(tmp_path / "nope.bin")
    with pytest.raises(ModelFormatError, match="config.json"):
        load_checkpoint(tmp_path)
