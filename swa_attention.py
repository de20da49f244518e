"""
Sliding-window attention: the rule, a plain implementation of it, and faster ones with the same result.

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

The paths (`impl`), in the order this file reads:
    simple    the rule as code: each query gets its own window of keys and one softmax over them. Read first.
    chunked   the optimization of simple: blocks of queries against shared key spans (views, not copies), in
              fused SDPA kernels. O(T * window) memory, never a T x T matrix.
    sdpa      F.scaled_dot_product_attention with a dense (T x S) mask: the reference and fallback.
    flex      torch.nn.attention.flex_attention with a cached block mask: the fast GPU path.
    compiled  the chunked path under torch.compile.
    auto      flash SDPA for plain full attention; on GPU sdpa for short sequences, else flex; chunked on CPU.

The specification every path is tested against is the float64 loop in tests/test_attention.py.
Timings: bench/README.md.
"""
import functools

import torch
import torch.nn.functional as F


def document_starts(doc_ids):
    """Index of the first token of each token's document, (B, S). Documents are contiguous runs of an id."""
    B, S = doc_ids.shape
    index = torch.arange(S, device=doc_ids.device).expand(B, S)
    first = torch.ones_like(doc_ids, dtype=torch.bool)
    first[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    return torch.where(first, index, 0).cummax(dim=1).values


# ----------------------------------------------------------------------------------------------------------
# The simple path: the rule as code. Read this first.

def simple_attention(q, k, v, window, sinks=0, q_offset=0, doc_ids=None):
    """Every query gets its own copy of the W keys of its window (plus its sinks) and takes one softmax over
    them. O(T * W) memory like the fast paths, but each key is copied W times (and once per query head that
    shares it); `chunked_attention` below computes the same from views of the keys."""
    B, Hq, T, D = q.shape
    S, G = k.shape[2], Hq // k.shape[1]
    end = q_offset + T
    W = end if window is None else min(window, end)  # no window is longer than the keys before the last query
    sinks = 0 if window is None else sinks
    docs = torch.zeros(B, S, dtype=torch.long, device=q.device) if doc_ids is None else doc_ids
    k, v = k.repeat_interleave(G, dim=1), v.repeat_interleave(G, dim=1)  # query head h reads key head h // G
    # With W - 1 empty keys (document -1) in front, query i's window, keys i - W + 1 .. i, is padded keys
    # i .. i + W - 1: unfold hands each query its own W keys, the last of them its own.
    k_win, v_win = (F.pad(x, (0, 0, W - 1, 0)).unfold(2, W, 1)[:, :, q_offset:end] for x in (k, v))  # (B,H,T,D,W)
    key_doc = F.pad(docs, (W - 1, 0), value=-1).unfold(1, W, 1)[:, q_offset:end]  # (B, T, W)
    q_doc = docs[:, q_offset:end, None]  # (B, T, 1)
    scores = torch.einsum("bhtd,bhtdw->bhtw", q, k_win)
    allowed = key_doc == q_doc  # window keys in the query's document (padded slots, document -1, in none)
    if sinks:
        # The first `sinks` keys of the query's document, where they lie before its window (inside it, the
        # window already has them). Those keys are in the query's document: documents are contiguous.
        i = torch.arange(q_offset, end, device=q.device)[:, None]
        j = document_starts(docs)[:, q_offset:end, None] + torch.arange(sinks, device=q.device)  # (B, T, sinks)
        index = j.clamp(max=S - 1).view(B, 1, T * sinks, 1).expand(B, Hq, T * sinks, D)
        k_sink, v_sink = (x.gather(2, index).view(B, Hq, T, sinks, D).transpose(3, 4) for x in (k, v))
        scores = torch.cat([scores, torch.einsum("bhtd,bhtds->bhts", q, k_sink)], -1)
        allowed = torch.cat([allowed, i - j >= W], -1)
        v_win = torch.cat([v_win, v_sink], -1)
    p = torch.softmax((scores / D ** 0.5).masked_fill(~allowed[:, None], float("-inf")), -1)
    # A query always sees itself (a padding query sees the padding around it), so no row is empty; padding
    # queries are zeroed here instead.
    return torch.einsum("bhtw,bhtdw->bhtd", p, v_win) * (q_doc >= 0)[:, None]


# ----------------------------------------------------------------------------------------------------------
# The chunked path: simple_attention, optimized. The same result, but the keys are never copied per query:
# blocks of queries share one span of keys, the spans are views, and SDPA's fused kernels do the softmax.

def chunked_attention(q, k, v, window, sinks=0, q_offset=0, doc_ids=None):
    """Blocked sliding-window attention in plain PyTorch: O(T * window) work and memory, never a T x T matrix.

    Cut the queries into blocks of P. The keys a block can see form one span, from W - 1 keys before its first
    query to its last query: P + W - 1 keys, rounded up here to L, a whole number of blocks (see KeySpans). So
    each block is a small dense attention, P queries against L keys under a band mask, and the band is the same
    for every block, because it depends only on how far a key lies from a query. SDPA takes all the blocks in
    one call, with one small (P, L) mask for all of them, and its fused kernels never write the scores out.
    The spans overlap; they are views into k and v, never copies.

    Two blocks have shapes of their own and get an SDPA call each: the head, the first queries, whose span
    would reach back past key 0 (it is cut short there), and the tail, the queries left after the last whole
    block. Packed documents and sinks give every block a different mask: `_chunked_masked`.
    """
    B, Hq, T, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    end = q_offset + T  # every key a query can see lies before key `end`
    assert S >= end, "the queries must be the last T of the keys (or earlier)"
    W = end if window is None else min(window, end)
    sinks = 0 if window is None else min(sinks, end)
    if doc_ids is not None or sinks:
        return _chunked_masked(q, k, v, W, sinks, q_offset, doc_ids)

    # SDPA's batch: one row per (sequence, key head), holding the G query heads that share that key head
    # (`grouped_sdpa`). Merging B with the heads is free for contiguous tensors, and doing it before cutting out
    # the spans means that at worst the keys get copied once, never the overlapping spans.
    G = Hq // Hkv
    q = q.reshape(B * Hkv, G, T, D)
    k, v = k.reshape(B * Hkv, S, D), v.reshape(B * Hkv, S, D)

    P = _block_size(W)
    # Whole blocks, so that the spans' gradients add back onto the keys as shifted slabs (KeySpans).
    L = -(-(P + W - 1) // P) * P  # a block's span: its own P keys and the W - 1 before, in whole blocks
    # Three pieces of the queries. The head: the first queries, whose span would start before key 0; one block
    # of its own size, its span cut at key 0. Then n whole blocks of P, every one against a span of L keys, all
    # in one SDPA call under one band mask. The tail: the fewer than P queries left over, one more call.
    head = min(T, max(0, L - P - q_offset))  # the queries whose span would start before key 0
    n = (T - head) // P  # whole blocks after the head
    tail = T - head - n * P
    spans = []  # per piece of the queries: (first key of its first span, blocks, block size, span)
    for first, count, size in (0, 1, head), (head, n, P), (T - tail, 1, tail):
        if count * size:
            stop = q_offset + first + size  # one past the piece's first block's last query, as a key index
            span = min(L if count > 1 else size + W - 1, stop)  # the head's span is cut at key 0
            spans.append((stop - span, count, size, span))
    q_pieces = q.split([count * size for _, count, size, _ in spans], dim=2)
    out = []
    for (_, count, size, span), blocks, k_span, v_span in zip(
            spans, q_pieces, KeySpans.apply(k, spans), KeySpans.apply(v, spans)):
        blocks = blocks.unflatten(2, (count, size))  # (B*Hkv, G, count, size, D); k_span: (B*Hkv, count, span, D)
        # A square block that its window covers (the head when q_offset is 0) is plain causal attention:
        # SDPA runs that with its flash kernel, which takes no mask.
        causal = span == size <= W
        out.append(grouped_sdpa(blocks, k_span, v_span, None if causal else band_mask(size, span, W, q.device)))
    return torch.cat([o.flatten(2, 3) for o in out], dim=2).view(B, Hq, T, D)


def _block_size(W):
    # A block of P queries computes about P + W scores per query where at most W are needed, so small blocks
    # waste less work. But in the backward pass every span gets its own gradient, (P + W) / P times the size
    # of k (and of v). P = W / 2 computes 1.5x the scores needed and keeps that 3x.
    return max(1, W // 2)


class KeySpans(torch.autograd.Function):
    """The keys each block of queries sees, as views of x (N, S, D): for every (start, count, step, span), a
    (N, count, span, D) tensor whose row c is keys [start + c * step, start + c * step + span).

    unfold makes the same views, but its backward is a generic kernel that sums the overlapping spans'
    gradients back onto the keys, and it was the slowest part of the blocked path after the attention kernels
    (timings: bench/README.md). Spans of whole steps add back as span / step shifted slabs instead, one strided
    add each, into one gradient for all the pieces.
    """

    @staticmethod
    def forward(ctx, x, spans):
        ctx.shape, ctx.spans = x.shape, spans
        return tuple(x[:, start:start + (count - 1) * step + span].unfold(1, span, step).transpose(2, 3)
                     for start, count, step, span in spans)

    @staticmethod
    def backward(ctx, *grads):
        N, S, D = ctx.shape
        grad_x = grads[0].new_zeros(N, S, D)
        for (start, count, step, span), grad in zip(ctx.spans, grads):
            if count == 1:  # one span: a slice
                grad_x[:, start:start + span] += grad[:, 0]
                continue
            for s in range(span // step):  # slab s: offsets [s * step, (s + 1) * step) of every span
                keys = grad_x[:, start + s * step:start + (s + count) * step]
                keys.view(N, count, step, D).add_(grad[:, :, s * step:(s + 1) * step])
        return grad_x, None


def band_mask(num_queries, num_keys, window, device=None):
    """(num_queries, num_keys) mask for queries that are the last of the keys: each sees itself and the
    window - 1 keys before it."""
    i = torch.arange(num_keys - num_queries, num_keys, device=device)[:, None]  # the queries' key indices
    j = torch.arange(num_keys, device=device)
    return (j <= i) & (i - j < window)


def grouped_sdpa(q, k, v, mask):
    """One SDPA call for grouped-query attention (many blocks here; the KV cache's decoding step in model.py).
    q: (N, G, H, P, D), k and v: (N, H, L, D), mask: broadcastable to (N, H, P, L), or None for causal (P == L).
    Returns (N, G, H, P, D).

    The G query heads that share a key head (grouped-query attention) are stacked into G * P rows against the
    same keys, so the keys are never repeated per query head; the mask is repeated instead, and it is small.
    """
    N, G, H, P, D = q.shape
    rows = q.transpose(1, 2).reshape(N, H, G * P, D)  # a view when G == 1
    if mask is None and G > 1:  # is_causal counts rows, and the stacked rows start over every P
        mask = torch.ones(P, P, dtype=torch.bool, device=q.device).tril()
    if mask is None:
        out = F.scaled_dot_product_attention(rows, k, v, is_causal=True)
    else:
        out = F.scaled_dot_product_attention(rows, k, v, attn_mask=mask.tile(G, 1))
    return out.view(N, H, G, P, D).transpose(1, 2)


def _chunked_masked(q, k, v, W, sinks, q_offset, doc_ids):
    """The blocked path when blocks need masks of their own: packed documents, padding, attention sinks.

    The same blocks, but the keys are padded in front so that every block has a full span (padding keys are
    masked), each block's (P, L) mask also checks document ids, and sink keys, which lie outside the spans,
    are appended to every block. SDPA shares a mask only across heads, so here its batch is (sequence, block)
    and its heads are the key heads; that layout copies the spans.
    """
    B, Hq, T, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    G = Hq // Hkv
    P = min(_block_size(W), T)
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
    q_blocks = F.pad(q, (0, 0, 0, n * P - T)).view(B, Hkv, G, n, P, D).permute(0, 3, 2, 1, 4, 5)  # (B, n, G, Hkv, P, D)

    # A span key must be in the query's window (the band) and in the query's document.
    same_doc = (q_doc[..., :, None] == key_doc[..., None, :]) & (key_doc[..., None, :] >= 0)
    allowed = band_mask(P, L, W, q.device) & same_doc  # (B, n, P, L)

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
    mask = (allowed | ~has_keys).flatten(0, 1)[:, None]  # (B*n, 1, P, keys)
    out = grouped_sdpa(q_blocks.flatten(0, 1), k_span.flatten(0, 1), v_span.flatten(0, 1), mask)  # (B*n, G, Hkv, P, D)
    out = out.view(B, n, G, Hkv, P, D) * has_keys[:, :, None, None]
    return out.permute(0, 3, 2, 1, 4, 5).reshape(B, Hq, n * P, D)[:, :, :T]


# ----------------------------------------------------------------------------------------------------------
# Library paths. Each library states a window its own way, and the rule is converted where it is handed over:
#   SDPA takes a boolean mask, True where a query may attend a key: `dense_mask` is the rule as that matrix.
#   flex_attention asks mask_mod(b, h, q_idx, kv_idx) for the same bool, q_idx counting queries from 0: the
#   rule's i is q_idx + q_offset, and window=None becomes a window of all S keys.
#   Flash-attention-style kernels take window_size=(left, right), the keys beside the query, itself not
#   counted: this project's W is window_size=(W - 1, 0). No path here calls one (bench/README.md says why).

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


# flex_attention computes only the (query block, key block) tiles that its block mask marks as not empty. A window's
# band cuts tiles on both of its edges, and smaller tiles waste less there: at window 512 a query block of 128
# computes 640 scores per query, one of 64 computes 576. For heads of up to 64 dimensions (SmolLM2's) the masks use
# 64 x 64 blocks and the kernels are pinned to 64 x 64 tiles, forward and backward, so that every run and card
# runs the same kernels; that made the SFT step faster. With 128-dimension heads the same tiles made the backward
# pass slower, so wider heads keep 128 x 128 blocks and inductor's own kernels (timings: bench/README.md).
# Inductor accepts 64 x 64 backward tiles for 64-dimension heads only when it autotunes (its Hopper default there
# is 64 x 128), so code that compiles flex_attention for such heads passes compile_options(): autotuning on, the
# matmuls left to cuBLAS (autotuning those too makes compiling far slower). Every candidate kernel is then the
# pinned one; the reports on them are turned off.
SMALL_TILES_MAX_HEAD_DIM = 64
SMALL_TILE_KERNEL_OPTIONS = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_M1": 64, "BLOCK_N1": 64, "BLOCK_M2": 64,
                             "BLOCK_N2": 64, "num_warps": 4, "num_stages": 3}


def compile_options(head_dim):
    """torch.compile options for code that runs flex_attention on heads of head_dim dimensions (None: defaults)."""
    if head_dim > SMALL_TILES_MAX_HEAD_DIM:
        return None
    return {"max_autotune": True, "max_autotune_gemm_backends": "ATEN", "autotune_num_choices_displayed": 0,
            "max_autotune_report_choices_stats": False}


@functools.lru_cache(maxsize=64)
def _cached_block_mask(B, T, S, window, sinks, q_offset, block, device):
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b, h, q_idx, kv_idx):
        i = q_idx + q_offset
        return (kv_idx <= i) & ((i - kv_idx < window) | (kv_idx < sinks))

    return create_block_mask(mask_mod, None, None, T, S, device=device, BLOCK_SIZE=block)


# Every layer of a forward pass asks for the same document mask, and building one is a pass over all B x T x S
# pairs, which every layer would repeat. So the last one is kept, for the same doc_ids tensor, unmodified (its
# version counter), and the same shape (timings: bench/README.md).
_last_doc_mask = None


# Inside a compiled block (sft.py --compile) the block mask is normally built by the block's own compiled code,
# which is cheap for short rows. But the mask's construction is then compiled with the block, and for long rows
# that compilation takes too long to wait for. Built outside the graph instead, the block's graph splits in two
# around the attention, which costs a few percent of an SFT step. So only masks over more query-key pairs than
# this are built outside compiled code (once per shape, or per doc_ids tensor); timings: bench/README.md.
IN_GRAPH_MASK_MAX_SCORES = 4096 * 4096


def _block_mask(B, T, S, window, sinks, q_offset, doc_ids, block, device):
    W = S if window is None else window
    if not (torch.compiler.is_compiling() and T * S <= IN_GRAPH_MASK_MAX_SCORES):
        return _eager_block_mask(B, T, S, W, sinks, q_offset, doc_ids, block, device)
    if doc_ids is None:
        return _cached_block_mask(B, T, S, W, sinks, q_offset, block, device)  # traced: the cache is bypassed
    return _build_doc_block_mask(T, S, W, sinks, q_offset, doc_ids, block)


@torch.compiler.disable
def _eager_block_mask(B, T, S, W, sinks, q_offset, doc_ids, block, device):
    global _last_doc_mask
    if doc_ids is None:
        return _cached_block_mask(B, T, S, W, sinks, q_offset, block, device)
    key = (doc_ids._version, T, S, W, sinks, q_offset, block)
    if _last_doc_mask is None or _last_doc_mask[0] is not doc_ids or _last_doc_mask[1] != key:
        _last_doc_mask = doc_ids, key, _build_doc_block_mask(T, S, W, sinks, q_offset, doc_ids, block)
    return _last_doc_mask[2]


def _build_doc_block_mask(T, S, W, sinks, q_offset, doc_ids, block):
    from torch.nn.attention.flex_attention import create_block_mask
    key_position = torch.arange(S, device=doc_ids.device) - document_starts(doc_ids)

    def mask_mod(b, h, q_idx, kv_idx):
        i = q_idx + q_offset
        same_doc = (doc_ids[b, i] == doc_ids[b, kv_idx]) & (doc_ids[b, kv_idx] >= 0)
        return same_doc & (kv_idx <= i) & ((i - kv_idx < W) | (key_position[b, kv_idx] < sinks))

    # Outside compiled code on a GPU, the builder is compiled on its own (once per shape): eager, it would write
    # out every B x T x S pair.
    return create_block_mask(mask_mod, doc_ids.shape[0], None, T, S, device=doc_ids.device, BLOCK_SIZE=block,
                             _compile=doc_ids.is_cuda and not torch.compiler.is_compiling())


def _compile(fn, options=None):
    # Every new shape (and grad mode) compiles a new kernel; past the recompile limit torch silently falls back
    # to eager, which for flex_attention means a dense T x S score matrix. Evaluation and benchmarks see many shapes.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    return torch.compile(fn, dynamic=False, options=options)


@functools.cache
def _flex(head_dim):
    from torch.nn.attention.flex_attention import flex_attention
    return _compile(flex_attention, compile_options(head_dim))


def flex_attention(q, k, v, window, sinks=0, q_offset=0, doc_ids=None):
    (B, _, T, D), S = q.shape, k.shape[2]
    small = D <= SMALL_TILES_MAX_HEAD_DIM
    block_mask = _block_mask(B, T, S, window, sinks if window is not None else 0, q_offset, doc_ids,
                             64 if small else 128, q.device)
    if q.device.type == "cuda":
        return _flex(D)(q, k, v, block_mask=block_mask, enable_gqa=q.shape[1] != k.shape[1],
                        kernel_options=SMALL_TILE_KERNEL_OPTIONS if small else None)
    # Off the GPU flex_attention runs its unfused reference path: slow, but exact (used by the tests).
    from torch.nn.attention.flex_attention import flex_attention as flex_eager
    return flex_eager(q, k, v, block_mask=block_mask, enable_gqa=q.shape[1] != k.shape[1])


# The compiled path: the chunked path's operations, fused by inductor.
@functools.cache
def _compiled_chunked():
    return _compile(chunked_attention)


# ----------------------------------------------------------------------------------------------------------
# Choosing a path.

IMPLS = ("auto", "simple", "chunked", "compiled", "sdpa", "flex")
# flex_attention compiles a kernel for every new shape, which takes seconds: worth it for long sequences and the
# fixed shapes of SFT, not for rollouts and evaluation batches, which come in ever-new short lengths. Up to this
# many scores per head, `auto` on a GPU takes the dense mask instead.
DENSE_MAX_SCORES = 1024 * 1024


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
        if not q.is_cuda:
            impl = "chunked"
        elif q.shape[2] * k.shape[2] <= DENSE_MAX_SCORES:
            impl = "sdpa"
        else:
            impl = "flex"
    if impl == "simple":
        return simple_attention(q, k, v, window, sinks, q_offset, doc_ids)
    if impl == "chunked":
        return chunked_attention(q, k, v, window, sinks, q_offset, doc_ids)
    if impl == "compiled":
        return _compiled_chunked()(q, k, v, window, sinks, q_offset, doc_ids)
    if impl == "sdpa":
        return sdpa_attention(q, k, v, window, sinks, q_offset, doc_ids)
    if impl == "flex":
        return flex_attention(q, k, v, window, sinks, q_offset, doc_ids)
    raise ValueError(f"unknown attention impl {impl!r}; choose from {', '.join(IMPLS)}")
