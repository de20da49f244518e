"""
A Llama/Qwen-family decoder-only transformer whose layers use sliding-window attention.

One file: the config, the modules, the KV cache, sampling, and checkpoint save/load.
Covered architectures: Llama (incl. Llama 3 rope scaling), Mistral, SmolLM2, Qwen2/2.5 (qkv bias),
Qwen3 (q/k RMSNorm). Every layer is sliding-window (config.window, config.sinks) unless it is listed in
config.full_layers, so a hybrid model is one config line. window=None is plain full attention.

Generation keeps, per sliding-window layer, a ring buffer of window + sinks key/value slots, so memory stays
constant however long the output; full-attention layers keep a full cache.

Try it (a tiny random model on the CPU):
    python model.py
"""
import functools
import json
import math
import os
import shutil
import subprocess
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from swa_attention import IMPLS, compile_options, document_starts, grouped_sdpa, sliding_window_attention


@dataclass
class Config:
    vocab_size: int = 259
    dim: int = 64
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 2
    head_dim: int | None = None  # None: dim // n_heads
    hidden_dim: int = 176  # SwiGLU inner size
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # Llama 3: factor, low_freq_factor, high_freq_factor, original_max_position_embeddings
    tie_embeddings: bool = True
    qkv_bias: bool = False  # Qwen2
    qk_norm: bool = False  # Qwen3
    window: int | None = None  # keys each query sees, itself included; None = full attention
    sinks: int = 0  # first tokens every query keeps seeing
    full_layers: list = field(default_factory=list)  # layers that keep full attention
    attn_impl: str = "auto"  # see swa_attention.py

    def __post_init__(self):
        # A config may come from an edited file: every field is checked here, so a bad value is one line naming
        # it rather than a shape or type error deep inside the model.
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "hidden_dim"):
            _check_int(name, getattr(self, name), 1)
        if self.head_dim is None:
            if self.dim % self.n_heads:
                raise ValueError(f"dim ({self.dim}) must be a multiple of n_heads ({self.n_heads}) when head_dim "
                                 "is not given")
            self.head_dim = self.dim // self.n_heads
        _check_int("head_dim", self.head_dim, 2)
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even (rotary embeddings turn pairs of dimensions), got {self.head_dim}")
        if not _is_number(self.norm_eps) or self.norm_eps < 0:
            raise ValueError(f"norm_eps must be a number >= 0, got {self.norm_eps!r}")
        if not _is_number(self.rope_theta) or self.rope_theta <= 0:
            raise ValueError(f"rope_theta must be a number > 0, got {self.rope_theta!r}")
        if self.rope_scaling is not None:
            _check_rope_scaling(self.rope_scaling)
        for name in ("tie_embeddings", "qkv_bias", "qk_norm"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.window is not None:
            _check_int("window", self.window, 1, "or none")
        _check_int("sinks", self.sinks, 0)
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})")
        if not isinstance(self.full_layers, (list, tuple)) or not all(
                isinstance(i, int) and not isinstance(i, bool) for i in self.full_layers):
            raise ValueError(f"full_layers must be a list of layer indices, got {self.full_layers!r}")
        bad = [i for i in self.full_layers if not 0 <= i < self.n_layers]
        if bad:
            raise ValueError(f"full_layers {bad} out of range for {self.n_layers} layers")
        if self.attn_impl not in IMPLS:
            raise ValueError(f"attn_impl must be one of {', '.join(IMPLS)}, got {self.attn_impl!r}")

    def layer_window(self, layer):
        return None if layer in self.full_layers else self.window


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_int(name, value, minimum, alternative=""):
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}{' ' + alternative if alternative else ''}, "
                         f"got {value!r}")


def _check_rope_scaling(s):
    keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    if not isinstance(s, dict) or s.get("rope_type", "llama3") != "llama3":
        raise ValueError(f"rope_scaling must be null or Llama 3's {{{', '.join(keys)}}}, got {s!r}")
    if not all(_is_number(s.get(k)) and s[k] > 0 for k in keys) or s["low_freq_factor"] == s["high_freq_factor"]:
        raise ValueError(f"rope_scaling needs positive numbers {', '.join(keys)} (the two frequency factors "
                         f"different), got {s!r}")


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # Normalise in float32, as the pretrained models did, whatever the activation dtype.
        y = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * y.to(x.dtype)


def rope_frequencies(config):
    """Inverse frequencies of the rotary embedding, with Llama 3's long-context rescaling when configured."""
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, config.head_dim, 2, dtype=torch.float64) / config.head_dim))
    s = config.rope_scaling
    if s is None:
        return inv_freq.float()
    if s.get("rope_type", "llama3") != "llama3":
        raise ValueError(f"unsupported rope scaling {s.get('rope_type')!r} (supported: llama3)")
    old_len = s["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    # Long wavelengths are stretched by `factor`, short ones kept, the band between interpolated smoothly.
    smooth = ((old_len / wavelen - s["low_freq_factor"]) / (s["high_freq_factor"] - s["low_freq_factor"])).clamp(0, 1)
    scaled = (1 - smooth) * inv_freq / s["factor"] + smooth * inv_freq
    return scaled.float()


def apply_rope(x, cos, sin):
    """Rotate-half RoPE (Hugging Face layout): pairs are (x[i], x[i + D/2])."""
    x1, x2 = x.chunk(2, dim=-1)
    return (x * cos + torch.cat([-x2, x1], dim=-1) * sin).to(x.dtype)


# How a decoding step (one new token per row) attends over the cache. bench/rollout.py times them side by side.
#   per_layer  every layer builds its mask from the slot positions and calls SDPA (the original path)
#   sdpa       the mask is built once per step and shared by the layers with the same slot layout (all sliding-window
#              layers; all full layers); SDPA picks its kernel
#   math       the same shared mask as an additive bias; scores, softmax and weighted sum as plain matmuls
#   flex       flex_attention's decoding kernel (split-KV flash decoding) with one block mask per slot layout; it reads
#              only the key blocks a row has filled, so a full-attention step costs what the rows' prefixes cost, not
#              what the cache could hold
#   auto       sdpa. On the GPU it gives the greedy tokens of the original eager path (flex and math do not: they
#              sum in another order, and bf16 rounding moves some completions onto other tokens) at nearly flex's speed
#              for windowed steps (bench/README.md); flex pays off for long full-attention completions (choose it)
DECODE_ATTENTION = os.environ.get("SWARR_DECODE_ATTENTION", "auto")  # a fallback without editing code
DECODE_IMPLS = ("auto", "per_layer", "sdpa", "math", "flex")
# SWARR_DECODE_COMPILE=1: the decoding step is compiled by inductor before it is captured as a CUDA graph, so that
# the norms, rotary embeddings, SwiGLU and sampling's element-wise work run as a few fused kernels per layer
DECODE_COMPILE = os.environ.get("SWARR_DECODE_COMPILE", "0") == "1"
FLEX_DECODE_BLOCK = 128  # keys per block of the flex block mask: the granularity at which unfilled slots are skipped


def decode_impl():
    if DECODE_ATTENTION not in DECODE_IMPLS:
        raise ValueError(f"unknown DECODE_ATTENTION {DECODE_ATTENTION!r}; choose from {', '.join(DECODE_IMPLS)}")
    if DECODE_ATTENTION == "auto":
        return "sdpa"
    return DECODE_ATTENTION


class DecodeStep:
    """What the layers with the same slot layout share in a decoding step: the slot each row's new token takes and
    the keys each row may attend. The first of those layers computes them; the others reuse them."""

    def __init__(self):
        self.rows = self.slots = self.mask = self.allowed = self.block_mask = None


class LayerCache:
    """Keys and values one layer keeps during generation.

    Position p lives in slot p for full layers. Sliding-window layers keep `sinks` fixed slots plus a ring of
    `window` slots (slot sinks + (p - sinks) % window). `positions` records what each slot holds (-1: empty),
    which is all the attention mask needs. One extra slot at the end receives writes that must be dropped.
    Layers with the same window lay out their slots alike and hold the same positions; `shared` is their DecodeStep,
    which the first of them in a forward pass (`leads`) computes.
    """

    def __init__(self, batch, n_kv_heads, head_dim, window, sinks, max_len, dtype, device, shared=None, leads=True):
        self.window, self.sinks = window, sinks
        self.ring = window is not None and window + sinks < max_len
        self.n_slots = window + sinks if self.ring else max_len
        self.k = torch.zeros(batch, n_kv_heads, self.n_slots + 1, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.positions = torch.full((batch, self.n_slots + 1), -1, dtype=torch.long, device=device)
        self.empty = True
        self.shared = DecodeStep() if shared is None else shared
        self.leads = leads

    def attend(self, q, k, v, positions):
        """Attention of new queries over the cached keys plus the new keys; the new keys are stored."""
        if q.shape[2] == 1 and decode_impl() != "per_layer":
            return self.decode(q, k, v, positions)
        if q.shape[2] == 1:
            # One new token per row (decoding): the slot it takes held a key already outside its window, so
            # store first and attend over the cache in place rather than copying the cache every step.
            self.store(k, v, positions)
            keys, values, kpos = self.k, self.v, self.positions
        else:
            # A chunk may overwrite ring slots its own earlier queries still need: attend first, then store.
            keys, values = torch.cat([self.k, k], dim=2), torch.cat([self.v, v], dim=2)
            kpos = torch.cat([self.positions, positions], dim=1)
        kpos, qpos = kpos[:, None, :], positions[:, :, None]
        allowed = (kpos >= 0) & (kpos <= qpos)
        if self.window is not None:
            allowed &= (qpos - kpos < self.window) | (kpos < self.sinks)
        has_keys = allowed.any(-1, keepdim=True)  # (B, T, 1)
        B, Hq, T, D = q.shape
        Hkv = k.shape[1]
        grouped = q.view(B, Hkv, Hq // Hkv, T, D).transpose(1, 2)  # (B, G, Hkv, T, D): no key copies per head
        out = grouped_sdpa(grouped, keys, values, (allowed | ~has_keys)[:, None])
        out = out.transpose(1, 2).reshape(B, Hq, T, D)
        if T > 1:
            self.store(k, v, positions)
        return out * has_keys[:, None]

    def store(self, k, v, positions):
        slots = positions.clamp(min=0)
        keep = positions >= 0
        if self.ring:
            slots = torch.where(slots < self.sinks, slots, self.sinks + (slots - self.sinks) % self.window)
            # Of a chunk longer than the ring, only the last `window` tokens (and the sinks) survive.
            last = positions.max(dim=1, keepdim=True).values
            keep &= (positions < self.sinks) | (positions > last - self.window)
        slots = torch.where(keep, slots, self.n_slots)
        rows = torch.arange(k.shape[0], device=k.device)[:, None].expand_as(slots)
        self.k[rows, :, slots] = k.transpose(1, 2).to(self.k.dtype)  # under autocast k may be bf16
        self.v[rows, :, slots] = v.transpose(1, 2).to(self.v.dtype)
        self.positions[rows, slots] = positions
        self.positions[:, self.n_slots] = -1
        self.empty = False

    def decode(self, q, k, v, positions):
        """One new token per row (positions (B, 1), -1 for padding): store it, then attend over the cache with the
        step's shared mask. Returns (B, Hq, 1, D)."""
        impl, step, n = decode_impl(), self.shared, self.n_slots
        if self.leads:
            slots = positions.clamp(min=0)
            if self.ring:
                slots = torch.where(slots < self.sinks, slots, self.sinks + (slots - self.sinks) % self.window)
            step.slots = torch.where(positions >= 0, slots, n)  # padding writes into the extra slot
            step.rows = torch.arange(positions.shape[0], device=positions.device)[:, None]
        # Indexed writes rather than scatter_: compiled, an indexed write into the cache stays in place, while
        # scatter_ makes inductor rewrite the whole cache, twice, in every layer
        self.k[step.rows, :, step.slots] = k.transpose(1, 2).to(self.k.dtype)
        self.v[step.rows, :, step.slots] = v.transpose(1, 2).to(self.v.dtype)
        self.positions[step.rows, step.slots] = positions
        if self.leads:
            self.share_mask(positions, impl, q.shape[1] // k.shape[1])
        keys, values = self.k[:, :, :n], self.v[:, :, :n]
        B, Hkv, _, D = k.shape
        Hq = q.shape[1]
        # The G query heads that share a key head become G queries against it: keys are never repeated per head.
        rows = q.reshape(B, Hkv, Hq // Hkv, D)
        if impl == "sdpa":
            out = F.scaled_dot_product_attention(rows, keys, values, attn_mask=step.mask)
        elif impl == "math":
            scores = torch.matmul(rows, keys.transpose(-1, -2)).to(step.mask.dtype) * D ** -0.5 + step.mask
            out = torch.matmul(scores.softmax(-1).to(values.dtype), values)
        else:
            out = flex_decode(rows, keys, values, step.block_mask)
        return out.reshape(B, Hq, 1, D)

    def share_mask(self, positions, impl, queries):
        """The keys each row may attend in this step, from the slots' positions (this layer's new token stored), in
        the form `impl` takes for `queries` queries per key head; kept in self.shared for the other layers."""
        step, n = self.shared, self.n_slots
        kpos = self.positions[:, :n]
        allowed = (kpos >= 0) & (kpos <= positions)
        if self.window is not None:
            allowed &= (positions - kpos < self.window) | (kpos < self.sinks)
        # A padding row (a finished row) has no key to attend: let it attend all of them rather than produce NaN. Its
        # output is never used, so unlike the per-layer path nothing zeroes it.
        allowed |= ~allowed.any(-1, keepdim=True)
        if impl == "sdpa":
            step.mask = allowed[:, None, None, :]  # (B, 1, 1, n): the same for every head and query
        elif impl == "math":
            dtype = torch.promote_types(self.k.dtype, torch.float32)  # the softmax in float32 at least
            bias = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, float("-inf"))
            step.mask = bias[:, None, None, :]
        else:
            # The block mask lives as long as the cache and reads two buffers that are overwritten in place every step
            # (a CUDA graph replays the same addresses): the allowed slots, and per row the number of key blocks up
            # to its last filled slot. Slots fill in order (ring slots too), so a row at position p has filled the
            # first min(p + 1, n) slots, and the kernel skips the blocks after them.
            if step.block_mask is None:
                step.allowed = torch.empty_like(allowed)
                step.block_mask = flex_decode_mask(step.allowed, queries)
            step.allowed.copy_(allowed)
            filled = (positions + 1).clamp(1, n)
            step.block_mask.kv_num_blocks.copy_((filled + FLEX_DECODE_BLOCK - 1)[:, :, None] // FLEX_DECODE_BLOCK)


def flex_decode_mask(allowed, queries):
    """A flex_attention block mask of `queries` queries per row and head against the n slots of `allowed` (B, n),
    which its mask_mod reads for every key: the mask is right for whatever the buffer holds when the kernel runs.
    Every row lists all its key blocks, in order; kv_num_blocks (B, 1, 1) says how many of them to read."""
    B, n = allowed.shape
    blocks = -(-n // FLEX_DECODE_BLOCK)
    kv_num_blocks = torch.full((B, 1, 1), blocks, dtype=torch.int32, device=allowed.device)
    kv_indices = torch.arange(blocks, dtype=torch.int32, device=allowed.device).expand(B, 1, 1, blocks).contiguous()

    def mask_mod(b, h, q_idx, kv_idx):
        return allowed[b, kv_idx]

    return BlockMask.from_kv_blocks(kv_num_blocks, kv_indices, BLOCK_SIZE=FLEX_DECODE_BLOCK, mask_mod=mask_mod,
                                    seq_lengths=(queries, n))


def _flex_decode(q, k, v, block_mask):
    return flex_attention(q, k, v, block_mask=block_mask)


@functools.cache
def _compiled_flex_decode():
    # A kernel is compiled for every new cache shape; generate rounds cache lengths up to limit how many there are.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    return torch.compile(_flex_decode, dynamic=False)


def flex_decode(q, k, v, block_mask):
    """flex_attention's decoding kernel: q (B, H, queries, D) against k, v (B, H, n, D)."""
    if not q.is_cuda or torch.compiler.is_compiling():
        return _flex_decode(q, k, v, block_mask)  # off the GPU: the exact reference; inside compiled code: traced
    # sft.py and rl.py generate with compiling turned off, so that their compiled blocks do not recompile for every
    # cache shape. This kernel compiles once per cache shape, and uncompiled, flex_attention is an unfused reference.
    with torch.compiler.set_stance("default"):
        return _compiled_flex_decode()(q, k, v, block_mask)


class Cache:
    """Per-layer caches plus how many real tokens each row has seen (rows are left-padded)."""

    def __init__(self, config, batch, max_len, dtype, device):
        shared = {}  # the layers with the same window lay out their slots alike: one DecodeStep for them all
        self.layers = []
        for i in range(config.n_layers):
            window = config.layer_window(i)
            # Which layer leads is fixed here rather than found in each step (by comparing the step's positions with
            # those the DecodeStep kept from the last step): a compiled step would guard on what the DecodeStep held,
            # and compile twice for every shape, once for a cache's first step and once for the steps after it.
            leads = window not in shared
            self.layers.append(LayerCache(batch, config.n_kv_heads, config.head_dim, window, config.sinks, max_len,
                                          dtype, device, shared.setdefault(window, DecodeStep()), leads))
        self.seen = torch.zeros(batch, dtype=torch.long, device=device)


class Attention(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        c = config
        self.n_heads, self.n_kv_heads, self.head_dim = c.n_heads, c.n_kv_heads, c.head_dim
        self.window, self.sinks, self.impl = c.layer_window(layer), c.sinks, c.attn_impl
        self.q_proj = nn.Linear(c.dim, c.n_heads * c.head_dim, bias=c.qkv_bias)
        self.k_proj = nn.Linear(c.dim, c.n_kv_heads * c.head_dim, bias=c.qkv_bias)
        self.v_proj = nn.Linear(c.dim, c.n_kv_heads * c.head_dim, bias=c.qkv_bias)
        self.o_proj = nn.Linear(c.n_heads * c.head_dim, c.dim, bias=False)
        if c.qk_norm:
            self.q_norm = RMSNorm(c.head_dim, c.norm_eps)
            self.k_norm = RMSNorm(c.head_dim, c.norm_eps)

    def forward(self, x, cos, sin, doc_ids, positions, cache):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is None:
            y = sliding_window_attention(q, k, v, self.window, self.sinks, self.impl, doc_ids=doc_ids)
        elif cache.empty:
            # First chunk (the prompt): the fast path over the chunk alone, then fill the cache.
            y = sliding_window_attention(q, k, v, self.window, self.sinks, self.impl, doc_ids=doc_ids)
            cache.store(k, v, positions)
        else:
            y = cache.attend(q, k, v, positions)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.gate_proj = nn.Linear(config.dim, config.hidden_dim, bias=False)
        self.up_proj = nn.Linear(config.dim, config.hidden_dim, bias=False)
        self.down_proj = nn.Linear(config.hidden_dim, config.dim, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        self.input_layernorm = RMSNorm(config.dim, config.norm_eps)
        self.self_attn = Attention(config, layer)
        self.post_attention_layernorm = RMSNorm(config.dim, config.norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, doc_ids, positions, cache):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, doc_ids, positions, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class Transformer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        if not config.tie_embeddings:
            self.lm_head = nn.Linear(config.dim, config.vocab_size, bias=False)
        self.register_buffer("inv_freq", rope_frequencies(config), persistent=False)
        self.gradient_checkpointing = False

    def _apply(self, fn, recurse=True):
        # .to(bfloat16) would round the RoPE frequencies too (angles off by radians at long positions):
        # recompute them in float32 after every move or cast.
        super()._apply(fn, recurse)
        self.inv_freq = rope_frequencies(self.config).to(self.embed_tokens.weight.device)
        return self

    def init_weights(self, seed=0):
        """Random initialisation for models trained from scratch (tests, benchmarks)."""
        g = torch.Generator().manual_seed(seed)
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                nn.init.ones_(p)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
            else:
                p.data.copy_(torch.randn(p.shape, generator=g) * 0.02)
        return self

    def forward(self, idx, doc_ids=None, cache=None, targets=None, loss_fn=None, last_only=False):
        """idx (B, T) token ids -> logits (B, T, vocab) in float32.

        doc_ids (B, T): document id of each token, -1 for padding; positions restart in each document.
        cache: a Cache when generating; rows may be left-padded (doc id -1) in the first chunk.
        targets (B, T): next-token ids, -1 where there is no loss. Given, forward returns the cross-entropy
        summed over the targets >= 0 instead of the logits: loss_fn(x, head_weight, targets) on the final
        hidden states x (B, T, dim), head_loss by default (sft.py --compile passes it compiled).
        last_only: logits (B, 1, vocab) of the last position only, all that sampling needs; a prefill's full
        logits would be B x T x vocab floats (20 GB for 512 prompts of 200 tokens with a 49k vocabulary).
        """
        B, T = idx.shape
        if cache is not None:
            real = torch.ones_like(idx, dtype=torch.bool) if doc_ids is None else doc_ids >= 0
            positions = torch.where(real, cache.seen[:, None] + real.cumsum(1) - 1, -1)
            cache.seen += real.sum(1)
        elif doc_ids is not None:
            positions = torch.arange(T, device=idx.device) - document_starts(doc_ids)
        else:
            positions = torch.arange(T, device=idx.device).expand(B, T)
        angles = positions.clamp(min=0)[:, None, :, None].float() * self.inv_freq
        cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
        x = self.embed_tokens(idx)
        for i, layer in enumerate(self.layers):
            layer_cache = None if cache is None else cache.layers[i]
            if self.gradient_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(layer, x, cos, sin, doc_ids, positions, None, use_reentrant=False)
            else:
                x = layer(x, cos, sin, doc_ids, positions, layer_cache)
        x = self.norm(x[:, -1:] if last_only else x)
        head = self.embed_tokens.weight if self.config.tie_embeddings else self.lm_head.weight
        if targets is None:
            return F.linear(x, head).float()
        return (loss_fn or head_loss)(x, head, targets)

    def make_cache(self, batch, max_len):
        return Cache(self.config, batch, max_len, self.embed_tokens.weight.dtype, self.embed_tokens.weight.device)

    def compile_blocks(self):
        """torch.compile each block (sft.py and rl.py --compile). The identical blocks share one compiled graph, so
        compiling takes seconds; a new row length recompiles rather than going symbolic. The options let
        flex_attention inside a block take its pinned kernels (swa_attention.compile_options)."""
        for block in self.layers:
            block.compile(dynamic=False, options=compile_options(self.config.head_dim))

    def set_window(self, window, sinks=None):
        """Change the attention window of every sliding-window layer (weights are unchanged)."""
        c = self.config
        c.window = window
        c.sinks = c.sinks if sinks is None else sinks
        c.__post_init__()
        for i, layer in enumerate(self.layers):
            layer.self_attn.window, layer.self_attn.sinks = c.layer_window(i), c.sinks

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, seq_len):
        """Training FLOPs per token (forward + backward): 6 per weight plus the attention scores actually computed."""
        c = self.config
        # The embedding lookup costs nothing; the output head is a matmul (the same weights when tied).
        weights = self.num_params() - (0 if c.tie_embeddings else c.vocab_size * c.dim)
        attn = 0
        for i in range(c.n_layers):
            w = c.layer_window(i)
            keys = seq_len / 2 if w is None or w >= seq_len else w
            attn += 12 * c.n_heads * c.head_dim * keys
        return 6 * weights + attn


def head_loss(x, weight, targets):
    """Output head and loss: cross-entropy summed over targets >= 0, from the final hidden states x (B, T, dim).

    Logits in the activation dtype (bf16 under autocast), log-softmax in float32. Compiled (`sft.py --compile`),
    inductor writes the (B*T, vocab) logits once, in bf16, folds the float32 cast, log-sum-exp and target pick
    into one pass over them, and computes their gradient (softmax - one-hot, in bf16) in one more. Eager, the
    float32 logits, their log-softmax and its gradient are each written and read again: at 8 x 4096 tokens and
    a 49k vocabulary, 6 GB apiece.
    """
    logits = F.linear(x, weight).float()
    return F.cross_entropy(logits.flatten(0, -2), targets.flatten(), ignore_index=-1, reduction="sum")


def sample_next(logits, temperature, top_k=None, top_p=None, generator=None, clocks=None):
    """Pick one token per row of logits (B, vocab). Returns (tokens, their log-probabilities under
    softmax(logits / temperature)); temperature 0 picks the argmax, with log-probabilities at temperature 1.
    clocks: the exponential draws below, (B, vocab) float32, if the caller has drawn them (then generator is unused).

    Sampling is Gumbel-max: with E_i ~ Exp(1) drawn independently for every token, argmax_i(log p_i - log E_i) is
    token i with probability p_i (the first of independent exponential clocks E_i / p_i to ring). That is a few
    elementwise passes and an argmax, with no sort, cumulative sum or trip to the host as in torch.multinomial, so
    it runs inside the decoding step's CUDA graph. top_k and top_p, only when asked, take the other tokens out of
    the race; top_p sorts the vocabulary.
    """
    logprobs = F.log_softmax(logits / temperature if temperature > 0 else logits, dim=-1)
    if temperature <= 0:
        tokens = logits.argmax(-1)
    else:
        race = logprobs
        if top_k:
            kth = race.topk(min(top_k, race.shape[-1]), dim=-1).values[:, -1:]
            race = race.masked_fill(race < kth, float("-inf"))
        if top_p is not None and top_p < 1.0:
            sorted_lp, order = race.sort(dim=-1, descending=True)
            p = sorted_lp.softmax(-1)
            drop = p.cumsum(-1) - p > top_p  # keep the smallest prefix whose mass reaches top_p
            race = race.scatter(-1, order, sorted_lp.masked_fill(drop, float("-inf")))
        # exponential_ does not return 0 on a GPU (its kernel maps the uniform's endpoint to a tiny positive value),
        # and on the CPU with probability 2^-53 at most, so log E is finite and a token out of the race never wins.
        if clocks is None:
            clocks = torch.empty_like(race).exponential_(generator=generator)
        tokens = (race - clocks.log()).argmax(-1)
    return tokens, logprobs.gather(-1, tokens[:, None]).squeeze(-1)


def cuda_graphed(step, device, generator=None):
    """step(), which takes no arguments and reads and writes only tensors that keep their addresses, captured once as
    a CUDA graph and replayed at every later call.

    A small model's decoding step is a few hundred tiny kernels, and on a GPU launching them one by one takes longer
    than running them. Random numbers drawn inside the graph stay random: the graph is registered with the
    generator, which hands every replay a fresh offset and advances as it would have eagerly.
    """
    graph, warmups = None, 2

    def replay():
        nonlocal graph, warmups
        if warmups:  # capturing needs a few eager runs first, on a side stream; they are real steps
            warmups -= 1
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                step()
            torch.cuda.current_stream(device).wait_stream(side)
            return
        if graph is None:  # capturing records the kernels without running them
            graph = torch.cuda.CUDAGraph()
            if generator is not None:  # the default generator is registered with every graph already
                graph.register_generator_state(generator)
            with torch.cuda.graph(graph):
                step()
        graph.replay()

    return replay


def compiled_step(step):
    """step() compiled by inductor, with compiling on even where the caller turned it off (sft.py and rl.py generate
    under the "force_eager" stance, so that their compiled blocks do not recompile for every cache shape)."""
    # one compilation per batch and cache length
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    compiled = torch.compile(step, dynamic=False)

    def run():
        with torch.compiler.set_stance("default"):
            compiled()

    return run


def to_device(values, device, dtype=torch.long):
    """A host list as a tensor on `device`, copied without making the host wait for the device's queue."""
    t = values if isinstance(values, torch.Tensor) else torch.tensor(values, dtype=dtype)
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t


class Decoder:
    """Rows of generation advanced together, one token per row per step: the KV cache, the token each row feeds
    next, and what each row has generated. `load` starts prompts in some rows (their caches reset, their prompts
    prefilled) while the others go on. A row stops at a stop token (kept) or after max_new_tokens; stopped rows are
    fed as padding, which writes nothing to the cache.

    A step is: the forward pass over the fed tokens, sampling, and the bookkeeping (record the token, stop rows, feed
    the token back), all on the device and, on a GPU, all in one CUDA graph. The host learns which rows have stopped
    from `poll`.
    """

    def __init__(self, model, rows, max_len, max_new_tokens, temperature=0.0, top_k=None, top_p=None, stop_tokens=(),
                 generator=None, cuda_graph=True):
        self.model, self.device = model, model.embed_tokens.weight.device
        self.max_new_tokens, self.sampling = max_new_tokens, (temperature, top_k, top_p, generator)
        self.cache = model.make_cache(rows, max_len)  # a row's prompt and completion must fit in max_len positions
        for layer in self.cache.layers:  # `load` fills them, not a prefill of their own
            layer.empty = False
        device = self.device
        self.feed = torch.zeros(rows, 1, dtype=torch.long, device=device)
        self.feed_doc = torch.full((rows, 1), -1, dtype=torch.long, device=device)
        self.tokens = torch.zeros(rows, max_new_tokens + 1, dtype=torch.long, device=device)  # last column: dropped
        self.logprobs = torch.zeros(rows, max_new_tokens + 1, dtype=torch.float32, device=device)
        self.count = torch.zeros(rows, dtype=torch.long, device=device)
        self.done = torch.ones(rows, dtype=torch.bool, device=device)
        self.stop = torch.tensor(sorted(set(stop_tokens)), dtype=torch.long, device=device)
        # Sampling's random draws are made before the step rather than inside it: compiled code cannot take a
        # torch.Generator, and dynamo would cut the step into four graphs around the draw (each compiled per shape).
        self.clocks = None if temperature <= 0 else torch.empty(rows, model.config.vocab_size, dtype=torch.float32,
                                                                device=device)
        compiled = compiled_step(self._step) if DECODE_COMPILE else self._step

        def step():
            if self.clocks is not None:
                self.clocks.exponential_(generator=generator)
            compiled()

        graphed = cuda_graph and device.type == "cuda"
        self._run = cuda_graphed(step, device, generator) if graphed else step
        # The host reads which rows have stopped `lag` steps late: on a GPU it then never waits for the step it has
        # just launched, and the device runs that step meanwhile (one step more than needed, at the end).
        self.steps, self.snapshots, self.lag = 0, [], 1 if device.type == "cuda" else 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        # The step refers back to the decoder, a cycle that Python's garbage collector frees only at its next pass,
        # which GPU memory does not prompt (a full-attention cache of 1024 rows is gigabytes): broken here, the cache
        # and the CUDA graph's memory go as soon as the caller lets go of the decoder.
        self._run = None

    @torch.no_grad()
    def _step(self):
        logits = self.model(self.feed, doc_ids=self.feed_doc, cache=self.cache, last_only=True)[:, -1]
        token, logprob = sample_next(logits, *self.sampling, clocks=self.clocks)
        live = ~self.done
        column = torch.where(live, self.count, self.max_new_tokens)[:, None]
        self.tokens.scatter_(1, column, token[:, None])
        self.logprobs.scatter_(1, column, logprob[:, None].to(self.logprobs.dtype))
        self.count += live
        self.done |= (token[:, None] == self.stop).any(-1) | (self.count >= self.max_new_tokens)
        self.feed.copy_(token[:, None])
        self.feed_doc.copy_(torch.where(live, 0, -1)[:, None])  # a row's stop token is fed still, then padding

    def step(self):
        self._run()
        self.steps += 1
        if self.device.type == "cuda":
            done = torch.empty(self.done.shape, dtype=torch.bool, pin_memory=True)
            done.copy_(self.done, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self.snapshots.append((self.steps, done, event))
        else:
            self.snapshots.append((self.steps, self.done.clone(), None))

    def poll(self):
        """(step, done): the rows' stop flags (a host tensor) after step number `step`, `lag` steps before the last;
        None until there is one."""
        if len(self.snapshots) <= self.lag:
            return None
        step, done, event = self.snapshots.pop(0)
        if event is not None:
            event.synchronize()
        return step, done

    @torch.no_grad()
    def load(self, rows, prompts):
        """Start prompts[i] in row rows[i]: reset the row's cache, prefill all of the prompt but its last token, which
        the next step feeds. Other rows are not touched. The prefill runs eagerly in a cache of its own, sized for the
        new prompts, whose slots are copied into the rows' (a position's slot does not depend on the cache's length)."""
        if not all(prompts):
            raise ValueError("prompts must not be empty")
        index = to_device(rows, self.device)
        longest = max(len(p) for p in prompts) - 1
        fresh = None
        if longest > 0:
            idx = torch.zeros(len(rows), longest, dtype=torch.long)
            doc_ids = torch.full((len(rows), longest), -1, dtype=torch.long)
            for row, p in enumerate(prompts):  # left-padded
                if len(p) > 1:
                    idx[row, longest - len(p) + 1:] = torch.tensor(p[:-1], dtype=torch.long)
                    doc_ids[row, longest - len(p) + 1:] = 0
            fresh = self.model.make_cache(len(rows), longest)
            self.model(to_device(idx, self.device), doc_ids=to_device(doc_ids, self.device), cache=fresh,
                       last_only=True)
        for i, layer in enumerate(self.cache.layers):
            layer.positions[index] = -1
            if fresh is not None:
                new = fresh.layers[i]
                n = new.n_slots
                layer.k[index, :, :n] = new.k[:, :, :n]
                layer.v[index, :, :n] = new.v[:, :, :n]
                layer.positions[index, :n] = new.positions[:, :n]
        self.cache.seen[index] = 0 if fresh is None else fresh.seen
        self.feed[index] = to_device([[p[-1]] for p in prompts], self.device)
        self.feed_doc[index] = 0
        self.count[index] = 0
        self.done[index] = False

    def results(self, rows):
        """(tokens, logprobs) of each of `rows`, lists of lists."""
        index = to_device(list(rows), self.device)
        count = self.count[index]
        width = int(count.max()) if len(rows) else 0
        counts = count.tolist()
        tokens, logprobs = self.tokens[index, :width].tolist(), self.logprobs[index, :width].tolist()
        return ([t[:c] for t, c in zip(tokens, counts)], [lp[:c] for lp, c in zip(logprobs, counts)])


def decoder_rows(n):
    """Rows of a Decoder for n rows of work: n, or with a compiled step the next power of two, so that a few shapes,
    each compiled once, serve every batch (the extra rows idle as padding)."""
    return 1 << (n - 1).bit_length() if DECODE_COMPILE else n


def cache_length(prompts, max_new_tokens):
    # Full-attention layers keep a slot per position. Rounded up, calls with other prompt lengths share cache shapes,
    # hence compiled attention kernels (one per shape).
    return -(-(max(map(len, prompts)) + max_new_tokens) // 128) * 128


@torch.no_grad()
def generate(model, prompts, max_new_tokens, temperature=0.0, top_k=None, top_p=None, stop_tokens=(), generator=None,
             cuda_graph=True):
    """Batched sampling from prompts (lists of token ids, of any lengths) through the KV cache. Each row stops on its
    own at a stop token (which is kept) or after max_new_tokens. Returns (tokens, logprobs), lists of lists per row.
    On a GPU the decoding step runs as a CUDA graph (cuda_graph=False: eagerly, for comparison)."""
    if not prompts or max_new_tokens <= 0:
        return [[] for _ in prompts], [[] for _ in prompts]
    rows = range(len(prompts))
    with Decoder(model, decoder_rows(len(prompts)), cache_length(prompts, max_new_tokens), max_new_tokens,
                 temperature, top_k, top_p, stop_tokens, generator, cuda_graph) as decoder:
        decoder.load(list(rows), prompts)
        for _ in range(max_new_tokens):
            decoder.step()
            polled = decoder.poll()
            if polled is not None and polled[1].all():
                break
        return decoder.results(rows)


@torch.no_grad()
def generate_continuous(model, prompts, max_new_tokens, slots, temperature=0.0, top_k=None, top_p=None,
                        stop_tokens=(), generator=None, cuda_graph=True, min_refill=None):
    """generate over a fixed number of rows (slots) with continuous batching: when a row finishes, a waiting prompt
    takes it (its cache reset, its prompt prefilled, the other rows untouched), so the batch never waits for its
    longest row. Returns (tokens, logprobs) per prompt, in the order of `prompts`; with temperature 0 each prompt's
    tokens are those generate returns for it.

    A prefill is an eager forward pass, whose kernel launches take longer than a decoding step on a GPU, so freed
    rows are refilled together: once min_refill of them are free (default slots // 8), once every waiting prompt
    fits, or when no row is running.
    """
    if not prompts or max_new_tokens <= 0:
        return [[] for _ in prompts], [[] for _ in prompts]
    # fewer prompts than slots: fewer rows, unless the step is compiled (every row count would be compiled anew)
    slots = max(1, slots if DECODE_COMPILE else min(slots, len(prompts)))
    min_refill = max(1, slots // 8) if min_refill is None else min_refill
    device = model.embed_tokens.weight.device
    n_rows = decoder_rows(slots)  # with a compiled step, more than slots: the rows past them idle as padding
    tokens = torch.zeros(len(prompts), max_new_tokens + 1, dtype=torch.long, device=device)
    logprobs = torch.zeros(len(prompts), max_new_tokens + 1, dtype=torch.float32, device=device)
    counts = torch.zeros(len(prompts), dtype=torch.long, device=device)
    waiting = list(range(len(prompts)))[::-1]  # popped from the end: input order
    prompt_of, first_step = [None] * n_rows, [0] * n_rows  # what each row runs, and from which step on
    free = list(range(slots))
    with Decoder(model, n_rows, cache_length(prompts, max_new_tokens), max_new_tokens, temperature, top_k, top_p,
                 stop_tokens, generator, cuda_graph) as decoder:
        while True:
            if waiting and free and (len(free) >= min(min_refill, len(waiting)) or len(free) == slots):
                rows = free[:len(waiting)]
                free = free[len(rows):]
                ids = [waiting.pop() for _ in rows]
                decoder.load(rows, [prompts[i] for i in ids])
                for row, i in zip(rows, ids):
                    prompt_of[row], first_step[row] = i, decoder.steps + 1
            if len(free) == slots:
                break
            decoder.step()
            polled = decoder.poll()
            if polled is None:
                continue
            step, done = polled
            # A row's flag counts from the first step it ran its prompt in; before that it is the previous prompt's.
            finished = [row for row in done.nonzero().flatten().tolist()
                        if prompt_of[row] is not None and first_step[row] <= step]
            if finished:
                rows, ids = to_device(finished, device), to_device([prompt_of[row] for row in finished], device)
                tokens.index_copy_(0, ids, decoder.tokens[rows])
                logprobs.index_copy_(0, ids, decoder.logprobs[rows])
                counts.index_copy_(0, ids, decoder.count[rows])
                for row in finished:
                    prompt_of[row] = None
                free += finished
    width = int(counts.max())
    counts, tokens, logprobs = counts.tolist(), tokens[:, :width].tolist(), logprobs[:, :width].tolist()
    return [t[:c] for t, c in zip(tokens, counts)], [lp[:c] for lp, c in zip(logprobs, counts)]


# ----------------------------------------------------------------------------------------------------------
# Checkpoints: a directory with config.json, model.safetensors (or shards + index), tokenizer files, meta.json.

SHARD_BYTES = 2 * 1024**3


def git_commit():
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _fsync(path):
    """Force a file's or a directory's contents to disk: a rename is only as durable as what it points to."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _save_temporaries(out_dir):
    """{pid: {"tmp": path, "old": path}}: the directories save_checkpoint of process pid left next to out_dir,
    <out_dir>.tmp<pid> (the checkpoint being written) and <out_dir>.old<pid> (the one it replaces)."""
    parent, name = os.path.split(out_dir)
    if not os.path.isdir(parent):
        return {}
    found = {}
    for entry in os.listdir(parent):
        kind, pid = entry[len(name) + 1:len(name) + 4], entry[len(name) + 4:]
        if entry.startswith(name + ".") and kind in ("tmp", "old") and pid.isascii() and pid.isdigit():
            found.setdefault(int(pid), {})[kind] = os.path.join(parent, entry)
    return found


def _process_running_since(pid, since):
    """Whether process pid is alive and was started by `since` (a Unix time). A pid the system gave to a
    process started later is not the one that made a temporary last changed at `since`."""
    if pid == os.getpid():
        return False  # this process saves one checkpoint at a time, and is not inside a save while it recovers
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    except OverflowError:
        return False  # too large to be a pid
    try:
        with open(f"/proc/{pid}/stat") as f:
            state, *fields = f.read().rsplit(")", 1)[1].split()  # the command name in (...) may hold spaces
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
    except (OSError, ValueError, IndexError, StopIteration):
        return True  # no /proc to tell a reused pid apart: assume it is the owner
    if state == "Z":
        return False  # exited, not yet reaped
    started = boot + int(fields[18]) / os.sysconf("SC_CLK_TCK")
    return started <= since + 1  # a second of slack for the clock's adjustments


def recover_checkpoint(out_dir):
    """Finish or undo a save_checkpoint that was interrupted, and remove what it left, so that out_dir holds
    the newest complete checkpoint. A save writes <out>.tmp<pid> completely, then renames <out> -> <out>.old<pid>
    and <out>.tmp<pid> -> <out>, then deletes <out>.old<pid>. So with <out> missing and <out>.old<pid> present,
    the swap was cut between its renames: <out>.tmp<pid>, complete, is the newest (without it, the old one is).
    Any other .tmp<pid> is an unfinished save and any other .old<pid> a replaced checkpoint: both are removed.
    Only exact <out>.tmp<digits> / <out>.old<digits> names are touched, and never those of a process still
    running (it may be inside its swap). Safe to run in several processes at once (ranks loading a checkpoint)."""
    out_dir = os.path.abspath(out_dir)
    for pid, paths in sorted(_save_temporaries(out_dir).items()):
        try:
            # ctime: a rename changes it too, so <out>.old<pid> dates from its owner's swap
            if any(_process_running_since(pid, os.stat(path).st_ctime) for path in paths.values()):
                continue
            if "old" in paths and not os.path.exists(out_dir):
                os.rename(paths.pop("tmp") if "tmp" in paths else paths.pop("old"), out_dir)
                _fsync(os.path.dirname(out_dir))
            for path in paths.values():
                shutil.rmtree(path)
        except FileNotFoundError:
            continue  # another process is recovering the same checkpoint and got there first


def save_checkpoint(out_dir, model, tokenizer, meta, shard_bytes=SHARD_BYTES, extra_files=None):
    """Write a checkpoint atomically: everything goes to a temporary sibling directory, flushed to disk, that is
    renamed into place only when complete; an interrupted save leaves the previous checkpoint (or, when cut
    between the two renames that replace it, the new one) for recover_checkpoint to put back.
    extra_files {name: write(path)} adds files (trainer state, metrics) that must always match the weights."""
    out_dir = os.path.abspath(out_dir)
    recover_checkpoint(out_dir)
    tmp = f"{out_dir}.tmp{os.getpid()}"
    os.makedirs(tmp)
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(asdict(model.config), f, indent=1)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    shards, current, size = [], {}, 0
    for name, t in tensors.items():
        if current and size + t.numel() * t.element_size() > shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = t
        size += t.numel() * t.element_size()
    shards.append(current)
    if len(shards) == 1:
        save_file(shards[0], os.path.join(tmp, "model.safetensors"))
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, os.path.join(tmp, fname))
            weight_map.update({name: fname for name in shard})
        with open(os.path.join(tmp, "model.safetensors.index.json"), "w") as f:
            json.dump({"weight_map": weight_map}, f, indent=1)
    tokenizer.save(tmp)
    with open(os.path.join(tmp, "meta.json"), "w") as f:
        json.dump({"commit": git_commit(), **meta}, f, indent=1, default=str)
    for name, write in (extra_files or {}).items():
        write(os.path.join(tmp, name))
    for directory, _, files in os.walk(tmp, topdown=False):
        for name in files:
            _fsync(os.path.join(directory, name))
        _fsync(directory)
    parent = os.path.dirname(out_dir)
    if os.path.exists(out_dir):  # replacing an earlier checkpoint of the same run
        old = f"{out_dir}.old{os.getpid()}"
        os.rename(out_dir, old)
        os.rename(tmp, out_dir)
        _fsync(parent)
        shutil.rmtree(old)
    else:
        os.rename(tmp, out_dir)
        _fsync(parent)


CHECKPOINT_FILES = ("config.json", "meta.json", "tokenizer_config.json", "tokenizer.tiktoken")
SHAPE_KEYS = ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "hidden_dim")  # no default fits a model


def _check_directory(path):
    from common import fail
    recover_checkpoint(path)
    if not os.path.isdir(path):
        fail(f"checkpoint directory {path} does not exist")
    for required in CHECKPOINT_FILES:
        if not os.path.isfile(os.path.join(path, required)):
            fail(f"checkpoint {path} is missing {required}")


def load_config(path):
    """The Config of checkpoint directory `path`, checked: a missing directory or file, or a config.json that
    does not describe a model, is a UserError naming the file."""
    from common import fail, read_json
    _check_directory(path)
    config_path = os.path.join(path, "config.json")
    raw = read_json(config_path)
    unknown = set(raw) - {f.name for f in fields(Config)}
    if unknown:
        fail(f"{config_path}: unknown keys {sorted(unknown)}")
    missing = [k for k in SHAPE_KEYS if k not in raw]
    if missing:
        fail(f"{config_path}: missing keys {missing}")
    try:
        return Config(**raw)
    except ValueError as e:
        fail(f"{config_path}: {e}")


def checkpoint_files(path):
    """Paths of a checkpoint's weights files: model.safetensors, or the shards its index lists. A malformed index
    or a missing file is a UserError naming it."""
    from common import fail, read_json
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map or not all(
                isinstance(f, str) and f and os.path.basename(f) == f for f in weight_map.values()):
            fail(f"{index}: \"weight_map\" must map tensor names to file names in the checkpoint directory")
        files = sorted(set(weight_map.values()))
    else:
        files = ["model.safetensors"]
    for fname in files:
        if not os.path.isfile(os.path.join(path, fname)):
            fail(f"checkpoint {path} is missing weights file {fname}")
    return [os.path.join(path, fname) for fname in files]


def load_checkpoint(path, device="cpu", dtype=None):
    """Load (model, tokenizer, meta). A bad directory raises UserError (a ValueError) with one line naming the file
    that is wrong."""
    from common import fail, read_json
    from tokenizer import Tokenizer
    config = load_config(path)
    state = {}
    for fpath in checkpoint_files(path):
        try:
            state.update(load_file(fpath))
        except SafetensorError as e:  # truncated or not a safetensors file at all
            fail(f"{fpath} is not a readable safetensors file ({e})")
    with torch.device("meta"):
        model = Transformer(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        fail(f"checkpoint {path}: weights do not match config.json (missing {missing[:3]}, unexpected {extra[:3]})")
    for k, shape in expected.items():
        if tuple(state[k].shape) != shape:
            fail(f"checkpoint {path}: {k} has shape {tuple(state[k].shape)}, config.json expects {shape}")
        if not state[k].is_floating_point():
            fail(f"checkpoint {path}: {k} holds {state[k].dtype} values, not floating point weights")
    model.load_state_dict(state, assign=True)
    model.inv_freq = rope_frequencies(config)  # buffers are not saved; this one is still on "meta"
    model.to(device=device, dtype=dtype)
    tokenizer = Tokenizer.load(path)
    if tokenizer.vocab_size > config.vocab_size:
        fail(f"checkpoint {path}: tokenizer has {tokenizer.vocab_size} tokens but the model only {config.vocab_size}")
    meta = read_json(os.path.join(path, "meta.json"))
    return model, tokenizer, meta


if __name__ == "__main__":
    from tokenizer import toy_tokenizer
    torch.manual_seed(0)
    tok = toy_tokenizer()
    model = Transformer(Config(vocab_size=tok.vocab_size, window=16, sinks=2)).init_weights().eval()
    prompt, _ = tok.encode_chat([{"role": "user", "content": "What is 2 + 3?"}], add_generation_prompt=True)
    logits = model(torch.tensor([prompt]))
    print(f"toy model: {model.num_params():,} parameters, window {model.config.window}, sinks {model.config.sinks}")
    print(f"forward: logits {tuple(logits.shape)}")
    tokens, logprobs = generate(model, [prompt], max_new_tokens=40, temperature=1.0, stop_tokens=tok.stop_tokens,
                                generator=torch.Generator().manual_seed(0))
    print(f"generated {len(tokens[0])} tokens (random weights, so random bytes): {tok.decode(tokens[0])!r}")
