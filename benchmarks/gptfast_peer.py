"""The peer polyllama's CUDA decode is measured against: gpt-fast's recipe in plain PyTorch.

The model follows pytorch-labs/gpt-fast model.py (fused wqkv, static KV cache written at
input_pos, scaled_dot_product_attention over the whole cache with a causal mask row, RoPE
on adjacent pairs, with Llama-3 frequency scaling where the shape has it) and its
generate.py settings (decode_one_token compiled with mode="reduce-overhead", fullgraph;
inductor coordinate-descent tuning). Weights and prompt are the same random ones
`polyllama bench` builds (polyllama.bench.random_checkpoint, random_prompt), and with
--with-polyllama both run in one process on one GPU, one after the other, greedy decoding.

    python benchmarks/gptfast_peer.py llama2-7b tinyllama-1.1b --with-polyllama
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from polyllama.bench import SHAPES, format_result, random_checkpoint, random_prompt, run_bench
from polyllama.reference import rope_frequencies


class KVCache(nn.Module):
    def __init__(self, max_seq, n_kv, hd, dtype):
        super().__init__()
        self.register_buffer("k_cache", torch.zeros(1, n_kv, max_seq, hd, dtype=dtype))
        self.register_buffer("v_cache", torch.zeros(1, n_kv, max_seq, hd, dtype=dtype))

    def update(self, input_pos, k, v):
        self.k_cache[:, :, input_pos] = k
        self.v_cache[:, :, input_pos] = v
        return self.k_cache, self.v_cache


def rms_norm(x, w, eps):
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).type_as(x) * w


def apply_rotary_emb(x, freqs_cis):
    xs = x.float().reshape(*x.shape[:-1], -1, 2)
    fc = freqs_cis.view(1, xs.size(1), 1, xs.size(3), 2)
    out = torch.stack([xs[..., 0] * fc[..., 0] - xs[..., 1] * fc[..., 1],
                       xs[..., 1] * fc[..., 0] + xs[..., 0] * fc[..., 1]], -1)
    return out.flatten(3).type_as(x)


class Block(nn.Module):
    def __init__(self, c, w, i, dtype, max_seq):
        super().__init__()
        p = f"layers.{i}."
        t = lambda n: torch.from_numpy(np.ascontiguousarray(w[p + n])).to("cuda", dtype)
        weights = dict(wqkv=torch.cat([t("wq"), t("wk"), t("wv")]), wo=t("wo"), w1=t("w1"),
                       w2=t("w2"), w3=t("w3"), attn_norm=t("attn_norm"), ffn_norm=t("ffn_norm"))
        for name, value in weights.items():       # buffers: static addresses for the graphs
            self.register_buffer(name, value)
        self.c, self.kv_cache = c, KVCache(max_seq, c.n_kv_heads, c.hd, dtype)

    def forward(self, x, freqs_cis, mask, input_pos):
        c = self.c
        B, T, _ = x.shape
        h = rms_norm(x, self.attn_norm, c.norm_eps)
        q, k, v = F.linear(h, self.wqkv).split([c.q_dim, c.kv_dim, c.kv_dim], dim=-1)
        q = apply_rotary_emb(q.view(B, T, c.n_heads, c.hd), freqs_cis)
        k = apply_rotary_emb(k.view(B, T, c.n_kv_heads, c.hd), freqs_cis)
        v = v.view(B, T, c.n_kv_heads, c.hd)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        k, v = self.kv_cache.update(input_pos, k, v)
        rep = c.n_heads // c.n_kv_heads
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0)
        x = x + F.linear(y.transpose(1, 2).reshape(B, T, c.q_dim), self.wo)
        h = rms_norm(x, self.ffn_norm, c.norm_eps)
        return x + F.linear(F.silu(F.linear(h, self.w1)) * F.linear(h, self.w3), self.w2)


class Transformer(nn.Module):
    def __init__(self, ckpt, dtype, max_seq):
        super().__init__()
        c, w = ckpt.config, ckpt.tensors
        t = lambda n: torch.from_numpy(np.ascontiguousarray(w[n])).to("cuda", dtype)
        self.c = c
        self.register_buffer("tok_embeddings", t("tok_embeddings"))
        self.register_buffer("norm", t("norm"))
        self.register_buffer("output", self.tok_embeddings if c.tie_embeddings else t("output"))
        self.layers = nn.ModuleList(Block(c, w, i, dtype, max_seq) for i in range(c.n_layers))
        freqs = torch.as_tensor(rope_frequencies(c.hd, c.rope_theta, c.rope_scaling),
                                dtype=torch.float32, device="cuda")
        angles = torch.outer(torch.arange(max_seq).float(), freqs)
        self.register_buffer("freqs_cis",
                             torch.stack([angles.cos(), angles.sin()], -1).to("cuda", dtype))
        self.register_buffer("causal_mask", torch.tril(
            torch.ones(max_seq, max_seq, dtype=torch.bool, device="cuda")))

    def forward(self, idx, input_pos):
        mask = self.causal_mask[None, None, input_pos]
        freqs_cis = self.freqs_cis[input_pos]
        x = F.embedding(idx, self.tok_embeddings)
        for layer in self.layers:
            x = layer(x, freqs_cis, mask, input_pos)
        return F.linear(rms_norm(x, self.norm, self.c.norm_eps), self.output).float()


def decode_one_token(model, x, input_pos):
    return model(x, input_pos)[:, -1].argmax(-1, keepdim=True).to(torch.int)


def peer_bench(shape, prompt_len=512, gen=128, repeats=3, seed=0):
    """(prefill tok/s, decode tok/s median, decode runs, greedy tokens of the first run)."""
    torch._inductor.config.coordinate_descent_tuning = True
    torch._inductor.config.triton.unique_kernel_names = True
    c = SHAPES[shape]
    max_seq = prompt_len + gen + 1
    with torch.device("cuda"):
        model = Transformer(random_checkpoint(c, seed), torch.bfloat16, max_seq).eval()
    step = torch.compile(decode_one_token, mode="reduce-overhead", fullgraph=True)
    prompt = torch.tensor(random_prompt(c, prompt_len, seed), device="cuda").view(1, -1)

    @torch.no_grad()
    def run():
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        tok = decode_one_token(model, prompt, torch.arange(prompt_len, device="cuda"))
        torch.cuda.synchronize()
        t1 = time.perf_counter()
        toks, pos = [tok], torch.tensor([prompt_len], device="cuda")
        for _ in range(gen):
            tok = step(model, tok.view(1, 1), pos).clone()
            toks.append(tok)
            pos += 1
        torch.cuda.synchronize()
        return t1 - t0, time.perf_counter() - t1, [int(t) for t in torch.cat(toks).view(-1)]

    run()                                             # compile and capture
    results = [run() for _ in range(repeats)]
    runs = [gen / r[1] for r in results]
    return (prompt_len / statistics.median(r[0] for r in results), statistics.median(runs),
            runs, results[0][2])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("shapes", nargs="*", default=["tinyllama-1.1b", "llama2-7b"])
    p.add_argument("--prompt-len", type=int, default=512)
    p.add_argument("--gen", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--with-polyllama", action="store_true",
                   help="also run `polyllama bench` on cuda:triton in this process")
    args = p.parse_args(argv)
    for shape in args.shapes:
        ours = None
        if args.with_polyllama:
            ours = run_bench(shape, "cuda:triton", "bf16", args.prompt_len, args.gen,
                             args.repeats)
            print(format_result(ours), flush=True)
            torch.cuda.empty_cache()
        pre, dec, runs, toks = peer_bench(shape, args.prompt_len, args.gen, args.repeats)
        print(f"{shape}  gpt-fast peer (torch.compile reduce-overhead)  bfloat16\n"
              f"  prefill {args.prompt_len} tokens: {pre:,.0f} tok/s (eager)\n"
              f"  decode {args.gen} tokens: {dec:,.1f} tok/s, median of {len(runs)} "
              f"({min(runs):,.1f} .. {max(runs):,.1f})", flush=True)
        if ours is not None:
            same = next((i for i, (a, b) in enumerate(zip(ours.tokens, toks)) if a != b),
                        min(len(toks), len(ours.tokens)))
            print(f"  polyllama / peer decode: {ours.decode_tok_s / dec:.2f}x; greedy tokens "
                  f"agree for the first {same} of {len(toks)}", flush=True)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
