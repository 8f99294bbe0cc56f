"""`python -m kernkit.demo`: train a tiny hybrid language model (attention + Mamba
blocks, BitLinear MLPs) on kernkit's own source text for a short while on CPU,
generate with the KV-cache / streaming-state decode path, and time the same
model built from plain PyTorch ops. About a minute on 2 cores."""

from __future__ import annotations

import argparse
import copy
import math
import os
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

import kernkit
from kernkit import reference as ref
from kernkit.nn import BitLinear, KVCache, apply_rotary, rotary_tables


# ----------------------------------------------------------------------------- two op sets

class KernkitOps:
    name = "kernkit"

    @staticmethod
    def rms_norm(x, w):
        return kernkit.rms_norm(x.contiguous(), w, 1e-6)

    _rotary = {}  # (positions, head dim, device) -> cos/sin tables

    @classmethod
    def attention(cls, q, k, v, cache, pos0):
        if cache is None:
            pos = pos0 + torch.arange(q.shape[1], device=q.device)
            return kernkit.flash_attn(apply_rotary(q, pos), apply_rotary(k, pos), v, causal=True)
        key = (cache.k.shape[1], q.shape[-1], q.device)
        if key not in cls._rotary:
            cls._rotary[key] = rotary_tables(key[0], key[1], device=q.device)
        cos, sin = cls._rotary[key]
        # rotary, append and attention in one call (flash-attn's rotary_cos/rotary_sin), at positions cache.lengths + i
        out = kernkit.flash_attn_with_kvcache(q, cache.k, cache.v, cache.lengths, k=k, v=v, causal=True,
                                              rotary_cos=cos, rotary_sin=sin, rotary_interleaved=False)
        cache.lengths += q.shape[1]
        return out

    @staticmethod
    def conv(x, w, b, state):
        if state is not None and not torch.is_grad_enabled():  # decode: roll the state in place
            return kernkit.causal_conv1d_update(x, state, w, b, activation="silu"), state
        return kernkit.causal_conv1d(x, w, b, activation="silu", initial_state=state, return_final_state=True)

    @staticmethod
    def scan(*args, **kw):
        return kernkit.selective_scan(*args, **kw)

    @staticmethod
    def linear(layer, x):
        return layer(x)


class TorchOps:
    name = "PyTorch"

    @staticmethod
    def rms_norm(x, w):
        return F.rms_norm(x, (x.shape[-1],), w, 1e-6)

    @staticmethod
    def attention(q, k, v, cache, pos0):
        pos = pos0 + torch.arange(q.shape[1], device=q.device)
        q, k = apply_rotary(q, pos), apply_rotary(k, pos)
        if cache is not None:  # a cache of concatenated keys, attended to with SDPA
            cache.k = torch.cat([cache.k, k], 1)
            cache.v = torch.cat([cache.v, v], 1)
            k, v = cache.k, cache.v
        # causal without a cache; with one, the new rows see the cache and the new keys up to their own
        # (a bottom-right mask: SDPA's is_causal aligns top-left when there are more keys than queries)
        Sq, Sk = q.shape[1], k.shape[1]
        mask = None if cache is None or Sq == 1 else \
            torch.ones(Sq, Sk, dtype=torch.bool, device=q.device).tril(Sk - Sq)
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           is_causal=cache is None, attn_mask=mask, enable_gqa=True)
        return o.transpose(1, 2)

    @staticmethod
    def conv(x, w, b, state):
        return ref.causal_conv1d_ref(x, w, b, activation="silu", initial_state=state, return_final_state=True)

    @staticmethod
    def scan(*args, **kw):
        return ref.selective_scan_ref(*args, **kw)

    @staticmethod
    def linear(layer, x):
        if getattr(layer, "deq_weight", None) is not None:  # inference: weights quantised once
            xq, s = ref.act_quant_ref(x)
            return F.linear((xq.float() / s).to(x.dtype), layer.deq_weight, layer.bias)
        return ref.bitlinear_emulated(x, layer.weight, layer.bias)


# ----------------------------------------------------------------------------- model

class Block(nn.Module):
    def __init__(self, dim, kind, heads=4, kv_heads=2, d_state=16):
        super().__init__()
        self.kind, self.h, self.hkv, self.hd = kind, heads, kv_heads, dim // heads
        self.norm1, self.norm2 = nn.Parameter(torch.ones(dim)), nn.Parameter(torch.ones(dim))
        if kind == "attention":
            self.qkv = nn.Linear(dim, (heads + 2 * kv_heads) * self.hd, bias=False)
            self.proj = nn.Linear(dim, dim, bias=False)
        else:
            self.d_inner, self.n = 2 * dim, d_state
            self.in_proj = nn.Linear(dim, 2 * self.d_inner, bias=False)
            self.conv_w = nn.Parameter(torch.randn(self.d_inner, 4) / 2)
            self.conv_b = nn.Parameter(torch.zeros(self.d_inner))
            self.x_proj = nn.Linear(self.d_inner, 8 + 2 * d_state, bias=False)
            self.dt_proj = nn.Linear(8, self.d_inner)
            self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1.0)).repeat(self.d_inner, 1))
            self.D = nn.Parameter(torch.ones(self.d_inner))
            self.proj = nn.Linear(self.d_inner, dim, bias=False)
        self.up, self.down = BitLinear(dim, 4 * dim), BitLinear(4 * dim, dim)

    def mix(self, x, ops, state, pos0):
        B, S, _ = x.shape
        if self.kind == "attention":
            q, k, v = self.qkv(x).split([self.h * self.hd, self.hkv * self.hd, self.hkv * self.hd], -1)
            q, k, v = (t.view(B, S, -1, self.hd) for t in (q, k, v))
            return self.proj(ops.attention(q, k, v, state, pos0).reshape(B, S, -1)), state
        xz = self.in_proj(x).transpose(1, 2)
        xs, z = xz[:, : self.d_inner].contiguous(), xz[:, self.d_inner:].contiguous()
        conv_state, ssm_state = state if state is not None else (None, None)
        xs, conv_state = ops.conv(xs, self.conv_w, self.conv_b, conv_state)
        dt, Bm, Cm = self.x_proj(xs.transpose(1, 2)).split([8, self.n, self.n], -1)
        delta = (dt @ self.dt_proj.weight.t()).transpose(1, 2).contiguous()
        y, ssm_state = ops.scan(xs, delta, -torch.exp(self.A_log), Bm.transpose(1, 2).contiguous(),
                                Cm.transpose(1, 2).contiguous(), D=self.D, z=z, delta_bias=self.dt_proj.bias,
                                delta_softplus=True, initial_state=ssm_state, return_last_state=True)
        return self.proj(y.transpose(1, 2)), (conv_state, ssm_state)

    def forward(self, x, ops, state=None, pos0=0):
        h, state = self.mix(ops.rms_norm(x, self.norm1), ops, state, pos0)
        x = x + h
        x = x + ops.linear(self.down, F.silu(ops.linear(self.up, ops.rms_norm(x, self.norm2))))
        return x, state


class TinyLM(nn.Module):
    def __init__(self, dim=128, kinds=("attention", "mamba", "attention")):
        super().__init__()
        self.emb = nn.Embedding(256, dim)
        self.blocks = nn.ModuleList(Block(dim, k) for k in kinds)
        self.norm = nn.Parameter(torch.ones(dim))
        self.head = nn.Linear(dim, 256, bias=False)

    def forward(self, tokens, ops, states=None, pos0=0):
        x = self.emb(tokens)
        states = states or [None] * len(self.blocks)
        for i, blk in enumerate(self.blocks):
            x, states[i] = blk(x, ops, states[i], pos0)
        return self.head(ops.rms_norm(x, self.norm)), states

    def new_states(self, ops, batch, capacity):
        states, dev = [], self.head.weight.device
        for blk in self.blocks:
            if blk.kind == "attention" and ops is KernkitOps:
                states.append(KVCache.empty(batch, capacity, blk.hkv, blk.hd, device=dev))
            elif blk.kind == "attention":
                empty = torch.zeros(batch, 0, blk.hkv, blk.hd, device=dev)
                states.append(KVCache(empty, empty.clone(), torch.zeros(batch, dtype=torch.int32, device=dev)))
            else:
                states.append(None)
        return states


# ----------------------------------------------------------------------------- demo steps

def corpus() -> torch.Tensor:
    here = os.path.dirname(kernkit.__file__)
    text = b""
    for root, _, files in os.walk(here):
        for f in sorted(files):
            if f.endswith(".py"):
                with open(os.path.join(root, f), "rb") as fh:
                    text += fh.read()
    return torch.tensor(list(text), dtype=torch.long)


def for_inference(model, ops):
    """A copy whose BitLinear weights are quantised once: packed for kernkit, dequantised
    ternary matrices for the PyTorch version."""
    m = copy.deepcopy(model)
    for layer in m.modules():
        if isinstance(layer, BitLinear):
            if ops is KernkitOps:
                layer.to_inference()
            else:
                w_q, scale = ref.ternary_quantize_ref(layer.weight.detach())
                layer.deq_weight = w_q.float() * scale
    return m


@torch.no_grad()
def generate(model, ops, prompt: bytes, n: int, temperature=0.7, seed=0) -> tuple[str, float]:
    model = for_inference(model, ops)
    g = torch.Generator().manual_seed(seed)
    dev = model.head.weight.device
    toks = torch.tensor([list(prompt)], device=dev)
    states = model.new_states(ops, 1, len(prompt) + n + 1)
    logits, states = model(toks, ops, states, 0)
    out, t0 = [], time.perf_counter()
    for i in range(n):
        probs = torch.softmax(logits[0, -1].float().cpu() / temperature, -1)
        nxt = torch.multinomial(probs, 1, generator=g)
        out.append(int(nxt))
        logits, states = model(nxt.view(1, 1).to(dev), ops, states, len(prompt) + i)
    tok_s = n / (time.perf_counter() - t0)
    return bytes(out).decode("utf-8", "replace"), tok_s


def train(model, ops, data, steps, batch, seq, log_every=10):
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    g = torch.Generator().manual_seed(1)
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(data) - seq - 1, (batch,), generator=g)
        dev = model.head.weight.device
        x = torch.stack([data[i: i + seq] for i in idx]).to(dev)
        y = torch.stack([data[i + 1: i + seq + 1] for i in idx]).to(dev)
        logits, _ = model(x, ops)
        loss = F.cross_entropy(logits.reshape(-1, 256), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if log_every and (step % log_every == 0 or step == 1):
            el = time.perf_counter() - t0
            bar = "#" * int(30 * step / steps)
            print(f"  [{bar:<30}] step {step:4d}/{steps}  loss {loss.item():.3f}  "
                  f"{step * batch * seq / el:,.0f} tok/s", flush=True)
    return loss.item()


def time_train_step(model, ops, data, batch, seq, reps=3):
    train(model, ops, data, 1, batch, seq, log_every=0)  # warm-up
    t0 = time.perf_counter()
    train(model, ops, data, reps, batch, seq, log_every=0)
    return (time.perf_counter() - t0) / reps


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m kernkit.demo", description=__doc__)
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=160, help="characters to generate")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (the model, data and both op sets run there)")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    info = kernkit.info()
    print(f"kernkit {info['version']} | CPU level {info['isa_selected']} | {info['threads']} threads")
    data = corpus()
    print(f"corpus: kernkit's own source, {len(data):,} bytes; model: attention + Mamba + attention blocks, "
          f"BitLinear MLPs\n\ntraining with kernkit kernels:")
    model = TinyLM().to(args.device)
    loss = train(model, KernkitOps, data, args.steps, args.batch, args.seq)
    print(f"\nfinal loss {loss:.3f} (uniform guess: {math.log(256):.3f})\n\nsample (KV-cache + streaming-state decode):")
    prompt = b"def flash_attn("
    text, tok_s = generate(model, KernkitOps, prompt, args.tokens)
    print("  " + (prompt.decode() + text).replace("\n", "\n  "))

    print("\nspeed, same model and weights, kernkit kernels vs plain PyTorch ops "
          "(SDPA, F.rms_norm, sequential selective scan, fake-quant BitLinear):")
    rows = []
    t_k = time_train_step(model, KernkitOps, data, args.batch, args.seq)
    t_t = time_train_step(model, TorchOps, data, args.batch, args.seq)
    rows.append(("train step (fwd+bwd+AdamW)", f"{t_k * 1e3:.0f} ms", f"{t_t * 1e3:.0f} ms", t_t / t_k))
    # decode after a short prompt and after a 1k-token context (where a KV cache and streaming states
    # matter); rounds alternate between the two op sets and the median counts (a shared machine is noisy)
    for label, ctx in (("decode, 15-token prompt", prompt), ("decode, 1k-token context", bytes(data[:1024].tolist()))):
        rates = {KernkitOps: [], TorchOps: []}
        for _ in range(3):
            for ops in rates:
                rates[ops].append(generate(model, ops, ctx, 64)[1])
        d_k, d_t = statistics.median(rates[KernkitOps]), statistics.median(rates[TorchOps])
        rows.append((label, f"{d_k:.0f} tok/s", f"{d_t:.0f} tok/s", d_k / d_t))
    print(f"  {'':28} {'kernkit':>12} {'PyTorch':>12} {'speedup':>8}")
    for name, a, b, r in rows:
        print(f"  {name:28} {a:>12} {b:>12} {r:>7.2f}x")


if __name__ == "__main__":
    main()
