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


def chunked_attention(q, k, v, window, sinks=0, q_offset=0, doc_ids=None, max_scores=2**26):
    """Blocked sliding-window attention in plain PyTorch.

    Queries are cut into blocks of P = min(window, T). The keys a block can see form one span of
    L = P + window - 1 keys ending at the block's last query, so each block is a small dense attention
    of P queries against L keys under a fixed band mask: O(T * window) work and memory.
    Sink keys lie outside that span, so they are gathered per query and scored separately.
    Blocks are processed a group at a time so that at most `max_scores` scores exist at once.
    """
    B, Hq, T, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    G = Hq // Hkv
    assert S >= q_offset + T, "the queries must be the last T of the keys (or earlier)"
    W = q_offset + T if window is None else min(window, q_offset + T)
    sinks = 0 if window is None else min(sinks, q_offset + T)
    P = min(W, T)
    L = P + W - 1
    n_blocks = -(-T // P)
    if doc_ids is None:
        doc_ids = torch.zeros(B, S, dtype=torch.long, device=q.device)

    # Key index j lives at padded index j + W - 1, so block b's span starts at padded index q_offset + b * P.
    # Padding keys get doc id -1 and are never attended.
    right = max(0, q_offset + n_blocks * P - S)
    k_pad = F.pad(k, (0, 0, W - 1, right))
    v_pad = F.pad(v, (0, 0, W - 1, right))
    doc_pad = F.pad(doc_ids, (W - 1, right), value=-1)
    q_doc = F.pad(doc_ids[:, q_offset:q_offset + T], (0, n_blocks * P - T), value=-1)
    q_pad = F.pad(q * D ** -0.5, (0, 0, 0, n_blocks * P - T)).view(B, Hkv, G, n_blocks, P, D)

    # In-block offsets: query r of a block sees span key c iff r <= c <= r + W - 1 (causal and inside the window).
    r = torch.arange(P, device=q.device)[:, None]
    c = torch.arange(L, device=q.device)[None, :]
    band = (c >= r) & (c <= r + W - 1)

    if sinks:
        # Sink s of query i is key start(i) + s; it is scored here only when it lies before i's window.
        start = F.pad(document_starts(doc_ids)[:, q_offset:q_offset + T], (0, n_blocks * P - T))
        position = torch.arange(q_offset, q_offset + n_blocks * P, device=q.device) - start
        s = torch.arange(sinks, device=q.device)
        sink_index = (start[:, :, None] + s).clamp(max=S - 1)  # (B, blocks * P, sinks)
        sink_ok = (position[:, :, None] - s >= W) & (q_doc[:, :, None] >= 0)  # padding queries see nothing

    out = torch.empty_like(q_pad)
    group = max(1, max_scores // (B * Hq * P * (L + sinks)))
    for b0 in range(0, n_blocks, group):
        b1 = min(n_blocks, b0 + group)
        n = b1 - b0
        lo, hi = q_offset + b0 * P, q_offset + b1 * P + W - 1
        k_span = k_pad[:, :, lo:hi].unfold(2, L, P)  # (B, Hkv, n, D, L): a view, spans overlap
        v_span = v_pad[:, :, lo:hi].unfold(2, L, P)
        doc_span = doc_pad[:, lo:hi].unfold(1, L, P)  # (B, n, L)
        qb = q_pad[:, :, :, b0:b1]  # (B, Hkv, G, n, P, D)
        scores = torch.einsum("bhgnpd,bhndl->bhgnpl", qb, k_span)
        qd = q_doc[:, b0 * P:b1 * P].view(B, n, P)
        allowed = band & (qd[..., :, None] == doc_span[..., None, :]) & (doc_span[..., None, :] >= 0)
        allowed = allowed[:, None, None]  # (B, 1, 1, n, P, L)
        if sinks:
            idx = sink_index[:, b0 * P:b1 * P].reshape(B, 1, n * P * sinks, 1)
            k_sink = torch.gather(k, 2, idx.expand(B, Hkv, -1, D)).view(B, Hkv, n, P, sinks, D)
            v_sink = torch.gather(v, 2, idx.expand(B, Hkv, -1, D)).view(B, Hkv, n, P, sinks, D)
            sink_scores = torch.einsum("bhgnpd,bhnpsd->bhgnps", qb, k_sink)
            scores = torch.cat([scores, sink_scores], dim=-1)
            ok = sink_ok[:, b0 * P:b1 * P].view(B, 1, 1, n, P, sinks)
            allowed = torch.cat([allowed, ok], dim=-1)
        # A query with nothing to attend (padding) would give NaN; let it see everything, then zero it.
        has_keys = allowed.any(-1, keepdim=True)
        # softmax accumulates in float32 even for bfloat16 scores, so they can stay in the input dtype.
        probs = scores.masked_fill(~(allowed | ~has_keys), float("-inf")).softmax(-1)
        o = torch.einsum("bhgnpl,bhndl->bhgnpd", probs[..., :L], v_span)
        if sinks:
            o = o + torch.einsum("bhgnps,bhnpsd->bhgnpd", probs[..., L:], v_sink)
        out[:, :, :, b0:b1] = o * has_keys
    return out.view(B, Hq, n_blocks * P, D)[:, :, :T]


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


@functools.cache
def _flex():
    from torch.nn.attention.flex_attention import flex_attention
    return torch.compile(flex_attention, dynamic=False)


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
    return torch.compile(chunked_attention, dynamic=False)


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
