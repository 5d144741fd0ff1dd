"""Independent reference models: tiny random Hugging Face LlamaForCausalLM on CPU torch.

Every loader test writes its file format from these same weights, so each loader is checked
against transformers, never against polyllama itself.
"""
from __future__ import annotations

import numpy as np

CONFIGS = {
    # name: (dim, hidden, layers, heads, kv_heads, vocab, tied)
    "gqa-tied": (64, 160, 2, 8, 2, 96, True),
    "mha-untied": (48, 112, 2, 4, 4, 80, False),
}


def make_hf_model(name: str = "gqa-tied", seed: int = 0, max_pos: int = 256,
                  rope_theta: float = 10000.0, eps: float = 1e-5, vocab: int | None = None):
    """A random-weight LlamaForCausalLM in float32 eval mode, deterministic for a seed
    (vocab overrides the config's vocabulary size, e.g. to fit a tokenizer)."""
    from transformers import LlamaConfig

    dim, hidden, layers, heads, kv, config_vocab, tied = CONFIGS[name]
    vocab = vocab or config_vocab
    cfg = LlamaConfig(hidden_size=dim, intermediate_size=hidden, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv, vocab_size=vocab,
                      max_position_embeddings=max_pos, rms_norm_eps=eps, rope_theta=rope_theta,
                      tie_word_embeddings=tied, bos_token_id=1, eos_token_id=2,
                      attn_implementation="eager")
    return random_llama(cfg, seed)


def random_llama(cfg, seed: int, scale: float = 0.2):
    """LlamaForCausalLM(cfg) in float32 eval mode with seeded random weights: matrices
    N(0, scale), norm weights 1 + N(0, 0.3); bigger than the default init, so logits are
    sharper."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).float().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, scale if p.dim() > 1 else 0.3)
            if p.dim() == 1:
                p.add_(1.0)
    return model


def unpermute_hf(w: np.ndarray, n_heads: int) -> np.ndarray:
    """HF rotate-half q/k rows -> Meta adjacent-pair rows (inverse of HF's conversion)."""
    out_dim, in_dim = w.shape
    hd = out_dim // n_heads
    return w.reshape(n_heads, 2, hd // 2, in_dim).transpose(0, 2, 1, 3).reshape(out_dim, in_dim)


# polyllama's per-layer weight names -> transformers' (under model.layers.{i}.)
HF_LAYER_NAMES = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
                  "wq": "self_attn.q_proj", "wk": "self_attn.k_proj", "wv": "self_attn.v_proj",
                  "wo": "self_attn.o_proj", "w1": "mlp.gate_proj", "w2": "mlp.down_proj",
                  "w3": "mlp.up_proj"}
HF_TOP_NAMES = {"tok_embeddings": "model.embed_tokens.weight", "norm": "model.norm.weight",
                "output": "lm_head.weight"}


def permute_to_hf(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Meta adjacent-pair rows -> HF rotate-half rows (inverse of unpermute_hf)."""
    out_dim, in_dim = w.shape
    hd = out_dim // n_heads
    return w.reshape(n_heads, hd // 2, 2, in_dim).transpose(0, 2, 1, 3).reshape(out_dim, in_dim)


def hf_weights(tensors: dict, n_heads: int, n_kv_heads: int) -> dict[str, np.ndarray]:
    """polyllama-named float arrays (pair layout) under transformers' names, float32
    (canonical_weights in reverse)."""
    out = {}
    for key, w in tensors.items():
        w = np.array(w, dtype=np.float32)               # a copy: files may be mapped read-only
        if key in HF_TOP_NAMES:
            out[HF_TOP_NAMES[key]] = w
            continue
        _, layer, kind = key.split(".")
        if kind in ("wq", "wk"):
            w = permute_to_hf(w, n_heads if kind == "wq" else n_kv_heads)
        out[f"model.layers.{layer}.{HF_LAYER_NAMES[kind]}.weight"] = w
    return out


def hf_model_from(ckpt):
    """A float32 LlamaForCausalLM holding a polyllama Checkpoint's weights, to check code
    that makes its own weights against transformers."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    c = ckpt.config
    assert not c.rope_scaling, "only plain RoPE is mapped to transformers here"
    cfg = LlamaConfig(hidden_size=c.dim, intermediate_size=c.hidden_dim,
                      num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads,
                      num_key_value_heads=c.n_kv_heads, vocab_size=c.vocab_size,
                      max_position_embeddings=c.max_seq_len, rms_norm_eps=c.norm_eps,
                      rope_theta=c.rope_theta, tie_word_embeddings=c.tie_embeddings,
                      attn_implementation="eager")
    sd = hf_weights(ckpt.tensors, c.n_heads, c.n_kv_heads)
    if c.tie_embeddings:
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    model = LlamaForCausalLM(cfg).float().eval()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
    return model


def canonical_weights(model) -> dict[str, np.ndarray]:
    """The model's weights under polyllama's canonical names (pair layout), float32."""
    c = model.config
    sd = {k: v.detach().cpu().float().numpy() for k, v in model.state_dict().items()}
    out = {"tok_embeddings": sd["model.embed_tokens.weight"], "norm": sd["model.norm.weight"]}
    if not c.tie_word_embeddings:
        out["output"] = sd["lm_head.weight"]
    for i in range(c.num_hidden_layers):
        for ours, theirs in HF_LAYER_NAMES.items():
            w = sd[f"model.layers.{i}.{theirs}.weight"]
            if ours == "wq":
                w = unpermute_hf(w, c.num_attention_heads)
            elif ours == "wk":
                w = unpermute_hf(w, c.num_key_value_heads)
            out[f"layers.{i}.{ours}"] = np.ascontiguousarray(w)
    return out


def hf_logits(model, ids) -> np.ndarray:
    """Logits [T, V] of the whole prompt, float64."""
    import torch
    with torch.no_grad():
        return model(torch.tensor([list(ids)])).logits[0].double().numpy()


def hf_greedy(model, ids, n: int) -> list[int]:
    """n greedy tokens after the prompt ids, through transformers' own KV cache
    (a plain argmax loop: generate() would suppress EOS under min_new_tokens)."""
    import torch
    out, past = [], None
    step = torch.tensor([list(ids)])
    with torch.no_grad():
        for _ in range(n):
            res = model(step, past_key_values=past, use_cache=True)
            past = res.past_key_values
            out.append(int(res.logits[0, -1].argmax()))
            step = torch.tensor([[out[-1]]])
    return out


def reference_checkpoint(model, max_seq_len: int = 256):
    """A polyllama Checkpoint holding the model's weights directly (no file in between)."""
    from polyllama import Checkpoint, LlamaConfig
    c = model.config
    cfg = LlamaConfig(dim=c.hidden_size, hidden_dim=c.intermediate_size,
                      n_layers=c.num_hidden_layers, n_heads=c.num_attention_heads,
                      n_kv_heads=c.num_key_value_heads, vocab_size=c.vocab_size,
                      max_seq_len=max_seq_len, norm_eps=c.rms_norm_eps,
                      rope_theta=getattr(c, "rope_theta", None) or c.rope_parameters["rope_theta"],
                      tie_embeddings=c.tie_word_embeddings).validated()
    return Checkpoint(cfg, canonical_weights(model), "memory", "<memory>").validate()


PROMPT = [1, 5, 7, 9, 11, 3, 17]


def polyllama_greedy(model, ids, n: int) -> list[int]:
    """n greedy tokens from a built polyllama Model: prefill, then decode steps that pick
    the argmax on the device."""
    model.prefill(ids, 0)
    out = [model.pick_on_device("argmax")]
    for i in range(n - 1):
        model.decode(len(ids) + i, pick="argmax")
        out.append(model.read_token())
    return out


def assert_matches_transformers(ckpt, hf, prompt=PROMPT, steps: int = 32,
                                device: str = "cpu:numpy", dtype=None, rtol: float = 1e-4):
    """The checkpoint, run by polyllama, against the transformers model: last-token logits
    within rtol of the largest logit, and `steps` greedy tokens equal."""
    from polyllama import get_device
    from polyllama.model import Model
    model = Model.build(ckpt, get_device(device), dtype)
    model.prefill(prompt, 0)
    ref = hf_logits(hf, prompt)[-1]
    assert np.max(np.abs(model.read_logits() - ref)) <= rtol * np.max(np.abs(ref))
    assert_greedy_matches(model, hf, prompt, steps)


def assert_greedy_matches(model, hf, prompt=PROMPT, steps: int = 32):
    """`steps` greedy tokens of a built polyllama Model equal the transformers model's,
    whose output must vary enough to prove anything."""
    want = hf_greedy(hf, prompt, steps)
    assert len(set(want)) > 4, "reference output too repetitive to prove anything"
    assert polyllama_greedy(model, prompt, steps) == want


def assert_token_loop_matches(model, hf, prompt=PROMPT, steps: int = 32):
    """The engine's token loop (greedy) on a built polyllama Model yields the transformers
    model's tokens, twice: the second run replays what the first recorded."""
    from polyllama.generate import SamplingParams, TokenLoop
    want = hf_greedy(hf, prompt, steps)
    assert len(set(want)) > 4, "reference output too repetitive to prove anything"
    for _ in range(2):
        assert list(TokenLoop(model, SamplingParams(temperature=0)).run(prompt, steps)) == want


# ---------------------------------------------------------------- int8 (q8_0) references


def expected_group(k: int) -> int:
    """The documented choice: the largest of 64, 32, 16, ... that divides the row width."""
    return max(g for g in (1, 2, 4, 8, 16, 32, 64) if k % g == 0)


def fake_quant(w: np.ndarray) -> np.ndarray:
    """W rounded through group-wise symmetric int8 along each row, computed independently."""
    w = np.asarray(w, dtype=np.float32)
    n, k = w.shape
    g = expected_group(k)
    groups = w.reshape(n, k // g, g)
    s = np.abs(groups).max(axis=2, keepdims=True) / np.float32(127)
    q = np.clip(np.round(groups / np.where(s == 0, 1, s)), -127, 127)
    return (q.astype(np.float32) * s).reshape(n, k)


def int8_hf_model(name: str, **kw):
    """The transformers model with every linear layer (the classifier included, untied from
    the embeddings, which stay dense) rounded through int8; kw go to make_hf_model."""
    import torch
    hf = make_hf_model(name, **kw)
    with torch.no_grad():
        for module in hf.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight = torch.nn.Parameter(
                    torch.from_numpy(fake_quant(module.weight.numpy())))
    return hf
