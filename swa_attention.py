"""
Sliding-window attention, four ways.

The rule, used everywhere in this project:

    query i attends key j  iff  j <= i  and  (i - j < window  or  j < sinks)

`window` counts keys including the query itself (window=1: a token sees only itself); window=None is full
causal attention. `sinks` keeps the first few keys visible to every query ("attention sinks").
Indices are positions inside a document: with packed rows (several documents in one row, `doc_ids`) a query
only sees its own document and the sinks are that document's first tokens; a negative doc id marks padding,
which no query attends. A query with nothing to attend (a padding query) returns zeros.

    sliding_window_attention(q, k, v, window, sinks=0, impl="auto", q_offset=0, doc_ids=None)

q is (B, Hq, T, D); k and v are (B, Hkv, S, D) with Hq a multiple of Hkv (grouped-query attention).
Query t sits at key index q_offset + t: the queries are the last T of the S keys when continuing a cache or
prefilling in chunks. doc_ids is (B, S), one id per key.

Paths:
    chunked   pure PyTorch, O(T * window) memory, never a T x T matrix. Read this one first.
    compiled  the chunked path under torch.compile.
    sdpa      F.scaled_dot_product_attention with a dense (T x S) mask: the reference and fallback.
    flex      torch.nn.attention.flex_attention with a cached block mask: the fast GPU path.
    auto      flash SDPA for plain full attention, flex on GPU, chunked on CPU.

Timings: `python bench/attention.py`.
"""
import functools

import torch
import torch.nn.functional as F

IMPLS = ("auto", "chunked", "compiled", "sdpa", "flex")


def document_starts(doc_ids):
    """Index of the first token of each token's document, (B, S). Documents are contiguous runs of an id."""
    B, S = doc_ids.shape
    index = torch.arange(S, device=doc_ids.device).expand(B, S)
    first = torch.ones_like(doc_ids, dtype=torch.bool)
    first[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    return torch.where(first, index, 0).cummax(dim=1).values


def chunked_attention(q, k, v, window, sinks=0, q_offset=0, doc_ids=None):
    """Blocked sliding-window attention in plain PyTorch.

    Queries are cut into blocks of P = min(window, T). The keys a block can see form one span of
    L = P + window - 1 keys ending at the block's last query, so each block is a small dense attention of P
    queries against L keys under a band mask. All blocks go to SDPA at once as a batch: O(T * window) work
    and memory, and SDPA's fused kernels never write the block scores out.
    Sink keys lie outside the span, so they are appended to every block's keys.
    """
    B, Hq, T, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    assert S >= q_offset + T, "the queries must be the last T of the keys (or earlier)"
    W = q_offset + T if window is None else min(window, q_offset + T)
    sinks = 0 if window is None else min(sinks, q_offset + T)
    P = min(W, T)
    L = P + W - 1
    n = -(-T // P)  # blocks
    packed = doc_ids is not None
    if doc_ids is None:
        doc_ids = torch.zeros(B, S, dtype=torch.long, device=q.device)

    # Key j sits at padded index j + W - 1, so block b's span is padded keys [q_offset + b*P, q_offset + b*P + L).
    # Padding keys get doc id -1 and are never attended.
    right = max(0, q_offset + n * P - S)
    k_pad, v_pad = (F.pad(x, (0, 0, W - 1, right))[:, :, q_offset:] for x in (k, v))
    doc_pad = F.pad(doc_ids, (W - 1, right), value=-1)[:, q_offset:]
    k_span = k_pad.unfold(2, L, P).permute(0, 2, 1, 4, 3)  # (B, n, Hkv, L, D); spans overlap
    v_span = v_pad.unfold(2, L, P).permute(0, 2, 1, 4, 3)
    key_doc = doc_pad.unfold(1, L, P)  # (B, n, L)
    q_doc = F.pad(doc_ids[:, q_offset:q_offset + T], (0, n * P - T), value=-1).view(B, n, P)
    q_blocks = F.pad(q, (0, 0, 0, n * P - T)).view(B, Hq, n, P, D).transpose(1, 2)  # (B, n, Hq, P, D)

    # Query r of a block sees span key c iff r <= c <= r + W - 1: causal and inside the window.
    r = torch.arange(P, device=q.device)[:, None]
    c = torch.arange(L, device=q.device)[None, :]
    band = (c >= r) & (c <= r + W - 1)
    allowed = band & (q_doc[..., :, None] == key_doc[..., None, :]) & (key_doc[..., None, :] >= 0)  # (B, n, P, L)

    if sinks:
        # Sink s of query i is key start(i) + s, counted here only when it lies before i's window.
        i = torch.arange(q_offset, q_offset + n * P, device=q.device).view(1, n, P, 1)
        s = torch.arange(sinks, device=q.device)
        if not packed:  # the same `sinks` keys for every block
            sink_index = s.expand(B, n, sinks)
            sink_ok = (i - s >= W) & (q_doc[..., None] >= 0)  # (B, n, P, sinks)
        else:  # each query brings its own document's sinks; a query only sees the copies it brought
            start = F.pad(document_starts(doc_ids)[:, q_offset:q_offset + T], (0, n * P - T)).view(B, n, P, 1)
            sink_index = (start + s).clamp(max=S - 1).view(B, n, P * sinks)
            own = (i - start - s >= W) & (q_doc[..., None] >= 0)  # (B, n, P, sinks)
            eye = torch.eye(P, dtype=torch.bool, device=q.device)
            sink_ok = (eye[None, None, :, :, None] & own[:, :, None, :, :]).reshape(B, n, P, P * sinks)
        gather = sink_index.reshape(B, 1, -1, 1).expand(B, Hkv, -1, D)
        k_sink, v_sink = (torch.gather(x, 2, gather).view(B, Hkv, n, -1, D).transpose(1, 2) for x in (k, v))
        k_span, v_span = torch.cat([k_span, k_sink], 3), torch.cat([v_span, v_sink], 3)
        allowed = torch.cat([allowed, sink_ok], -1)

    # A query with nothing to attend (padding) would give NaN; let it see everything, then zero it.
    has_keys = allowed.any(-1, keepdim=True)
    mask = (allowed | ~has_keys).flatten(0, 1)[:, None]
    G = Hq // Hkv
    if G > 1:
        k_span, v_span = (x.repeat_interleave(G, dim=2) for x in (k_span, v_span))
    out = F.scaled_dot_product_attention(q_blocks.flatten(0, 1), k_span.flatten(0, 1), v_span.flatten(0, 1),
                                         attn_mask=mask)
    out = out.view(B, n, Hq, P, D) * has_keys[:, :, None]
    return out.transpose(1, 2).reshape(B, Hq, n * P, D)[:, :, :T]


def dense_mask(T, S, window, sinks, q_offset, doc_ids, device):
    """The attention rule as a boolean (B or 1, T, S) matrix."""
    i = torch.arange(q_offset, q_offset + T, device=device)[:, None]
    j = torch.arange(S, device=device)[None, :]
    allowed = (j <= i)[None]
    key_position = j[None]
    if doc_ids is not None:
        q_doc = doc_ids[:, q_offset:q_offset + T]
        allowed = allowed & (q_doc[:, :, None] == doc_ids[:, None, :]) & (doc_ids[:, None, :] >= 0)
        key_position = (j - document_starts(doc_ids)[:, None, :])
    if window is not None:
        allowed = allowed & ((i - j < window) | (key_position < sinks))
    return allowed


def sdpa_attention(q, k, v, window, sinks=0, q_offset=0, doc_ids=None):
    T, S = q.shape[2], k.shape[2]
    allowed = dense_mask(T, S, window, sinks, q_offset, doc_ids, q.device)[:, None]
    has_keys = allowed.any(-1, keepdim=True)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed | ~has_keys, enable_gqa=q.shape[1] != k.shape[1])
    return out * has_keys


@functools.lru_cache(maxsize=64)
def _cached_block_mask(B, T, S, window, sinks, q_offset, device):
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b, h, q_idx, kv_idx):
        i = q_idx + q_offset
        return (kv_idx <= i) & ((i - kv_idx < window) | (kv_idx < sinks))

    return create_block_mask(mask_mod, None, None, T, S, device=device)


def _doc_block_mask(T, S, window, sinks, q_offset, doc_ids):
    from torch.nn.attention.flex_attention import create_block_mask
    key_position = torch.arange(S, device=doc_ids.device) - document_starts(doc_ids)
    W = S if window is None else window

    def mask_mod(b, h, q_idx, kv_idx):
        i = q_idx + q_offset
        same_doc = (doc_ids[b, i] == doc_ids[b, kv_idx]) & (doc_ids[b, kv_idx] >= 0)
        return same_doc & (kv_idx <= i) & ((i - kv_idx < W) | (key_position[b, kv_idx] < sinks))

    return create_block_mask(mask_mod, doc_ids.shape[0], None, T, S, device=doc_ids.device)


def _compile(fn):
    # Every new shape (and grad mode) compiles a new kernel; past the recompile limit torch silently falls back
    # to eager, which for flex_attention means a dense T x S score matrix. Evaluation and benchmarks see many shapes.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    return torch.compile(fn, dynamic=False)


@functools.cache
def _flex():
    from torch.nn.attention.flex_attention import flex_attention
    return _compile(flex_attention)


def flex_attention(q, k, v, window, sinks=0, q_offset=0, doc_ids=None):
    T, S = q.shape[2], k.shape[2]
    if doc_ids is None:
        W = S if window is None else window
        block_mask = _cached_block_mask(q.shape[0], T, S, W, sinks if window is not None else 0, q_offset, q.device)
    else:
        block_mask = _doc_block_mask(T, S, window, sinks if window is not None else 0, q_offset, doc_ids)
    if q.device.type == "cuda":
        return _flex()(q, k, v, block_mask=block_mask, enable_gqa=q.shape[1] != k.shape[1])
    # Off the GPU flex_attention runs its unfused reference path: slow, but exact (used by the tests).
    from torch.nn.attention.flex_attention import flex_attention as flex_eager
    return flex_eager(q, k, v, block_mask=block_mask, enable_gqa=q.shape[1] != k.shape[1])


@functools.cache
def _compiled_chunked():
    return _compile(chunked_attention)


def sliding_window_attention(q, k, v, window, sinks=0, impl="auto", q_offset=0, doc_ids=None):
    """See the module docstring for the rule and the paths."""
    if window is not None and window < 1:
        raise ValueError(f"window must be >= 1 or None, got {window}")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"query heads ({q.shape[1]}) must be a multiple of key/value heads ({k.shape[1]})")
    if impl == "auto":
        plain_causal = window is None and doc_ids is None and q_offset == 0 and q.shape[2] == k.shape[2]
        if plain_causal:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=q.shape[1] != k.shape[1])
        impl = "flex" if q.is_cuda else "chunked"
    if impl == "chunked":
        return chunked_attention(q, k, v, window, sinks, q_offset, doc_ids)
    if impl == "compiled":
        return _compiled_chunked()(q, k, v, window, sinks, q_offset, doc_ids)
    if impl == "sdpa":
        return sdpa_attention(q, k, v, window, sinks, q_offset, doc_ids)
    if impl == "flex":
        return flex_attention(q, k, v, window, sinks, q_offset, doc_ids)
    raise ValueError(f"unknown attention impl {impl!r}; choose from {', '.join(IMPLS)}")
