"""Every attention path against a float64 reference written straight from the rule, outputs and gradients."""
import pytest
import torch

from swa_attention import KeySpans, document_starts, sliding_window_attention

# The specification: `reference` below is the rule itself, one query and one key at a time in float64. Every path
# in swa_attention.py, from impl="simple" (the same rule, vectorised) to flex_attention, is checked against it.


def reference(q, k, v, window, sinks, q_offset, doc_ids):
    """query i attends key j iff same document, j <= i and (i - j < window or j is one of the first `sinks`)."""
    B, Hq, T, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    out = torch.zeros_like(q)
    docs = torch.zeros(B, S, dtype=torch.long) if doc_ids is None else doc_ids
    for b in range(B):
        for t in range(T):
            i = q_offset + t
            start = next(s for s in range(i, -1, -1) if s == 0 or docs[b, s - 1] != docs[b, i])
            keys = [j for j in range(start, i + 1) if docs[b, i] >= 0
                    and (window is None or i - j < window or j - start < sinks)]
            if keys:
                for h in range(Hq):
                    kv_head = h // (Hq // Hkv)
                    p = torch.softmax(q[b, h, t] @ k[b, kv_head, keys].T / D ** 0.5, -1)
                    out[b, h, t] = p @ v[b, kv_head, keys]
    return out


def assert_same_with_gradients(out, ref, inputs):
    """out equals ref, and so do their gradients with respect to inputs under the same random output gradient."""
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)
    grad = torch.randn_like(out)
    got = torch.autograd.grad((out * grad).sum(), inputs)
    want = torch.autograd.grad((ref * grad).sum(), inputs)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-9)


CASES = [  # T, q_offset, window, sinks, Hq, Hkv, docs
    (7, 0, 3, 0, 4, 2, None),  # odd length, GQA
    (9, 0, 1, 0, 2, 2, None),  # window 1: a token sees only itself
    (9, 0, 16, 0, 2, 1, None),  # window >= T
    (13, 0, 4, 2, 4, 2, None),  # sinks
    (11, 0, 2, 5, 2, 1, None),  # sinks > window
    (6, 5, 4, 2, 4, 2, None),  # queries at an offset into the keys
    (9, 3, None, 0, 2, 1, None),  # full attention with an offset
    (12, 0, 3, 1, 2, 1, "left_pad"),
    (17, 0, 5, 2, 4, 2, "packed"),
    (12, 0, None, 0, 2, 2, "packed"),
    (8, 4, 3, 2, 4, 2, "packed"),  # packed documents, sinks and GQA, the queries at an offset
    (8, 4, 3, 6, 4, 1, "left_pad"),  # padding, sinks > window, at an offset
    # Blocks of the chunked path (no documents, no sinks): a head whose window reaches key 0, whole blocks, a tail.
    (3, 0, 4, 0, 2, 2, None),  # fewer queries than the window: the head is everything
    (8, 0, 4, 0, 2, 1, None),  # the queries after the head fill whole blocks; GQA in the causal head
    (9, 0, 4, 0, 4, 2, None),  # one query past the whole blocks
    (7, 2, 4, 0, 4, 2, None),  # an offset inside the first window: a head that is not square, and a tail
    (7, 6, 5, 0, 2, 1, None),  # an offset past the window: no head
]


def make_docs(kind, B, S):
    if kind is None:
        return None
    docs = torch.zeros(B, S, dtype=torch.long)
    if kind == "left_pad":
        docs[0, :3] = -1
        docs[1, :S - 2] = -1
    else:
        docs[0, 4:] = 1
        docs[0, 9:] = 2
        docs[1, :2] = -1
        docs[1, 7:] = 3
    return docs


@pytest.mark.parametrize("impl", ["simple", "chunked", "sdpa", "auto"])
@pytest.mark.parametrize("case", CASES)
def test_matches_reference_with_gradients(impl, case):
    T, q_offset, window, sinks, Hq, Hkv, kind = case
    torch.manual_seed(hash(case) % 1000)
    B, D, S = 2, 8, T + q_offset
    q = torch.randn(B, Hq, T, D, dtype=torch.float64, requires_grad=True)
    k = torch.randn(B, Hkv, S, D, dtype=torch.float64, requires_grad=True)
    v = torch.randn(B, Hkv, S, D, dtype=torch.float64, requires_grad=True)
    docs = make_docs(kind, B, S)
    out = sliding_window_attention(q, k, v, window, sinks, impl=impl, q_offset=q_offset, doc_ids=docs)
    assert_same_with_gradients(out, reference(q, k, v, window, sinks, q_offset, docs), (q, k, v))


@pytest.mark.parametrize("case", CASES)
def test_flex_forward_matches_reference(case):
    # flex_attention has no backward on the CPU; its gradients are checked on the GPU by bench/attention.py.
    T, q_offset, window, sinks, Hq, Hkv, kind = case
    torch.manual_seed(1)
    B, D, S = 2, 8, T + q_offset
    q, k, v = torch.randn(B, Hq, T, D, dtype=torch.float64), *torch.randn(2, B, Hkv, S, D, dtype=torch.float64)
    docs = make_docs(kind, B, S)
    out = sliding_window_attention(q, k, v, window, sinks, impl="flex", q_offset=q_offset, doc_ids=docs)
    torch.testing.assert_close(out, reference(q, k, v, window, sinks, q_offset, docs), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("head_dim", [8, 72])  # 64 x 64 mask blocks, and 128 x 128 for heads wider than 64
def test_flex_across_mask_blocks(head_dim):
    # Windows, sinks and documents that start and end inside blocks of the flex block mask, against the dense path.
    torch.manual_seed(3)
    B, Hq, Hkv, T = 2, 4, 2, 300
    q = torch.randn(B, Hq, T, head_dim, dtype=torch.float64)
    k, v = torch.randn(2, B, Hkv, T, head_dim, dtype=torch.float64)
    docs = torch.zeros(B, T, dtype=torch.long)
    docs[0, 100:] = 1
    docs[0, 231:] = 2
    docs[1, :37] = -1
    for window, sinks, doc_ids in (70, 0, None), (130, 3, None), (70, 2, docs), (None, 0, docs):
        out = sliding_window_attention(q, k, v, window, sinks, impl="flex", doc_ids=doc_ids)
        want = sliding_window_attention(q, k, v, window, sinks, impl="sdpa", doc_ids=doc_ids)
        torch.testing.assert_close(out, want, rtol=1e-9, atol=1e-9)


def test_flex_document_mask_follows_the_documents():
    # The layers of one forward pass share one document block mask; a new doc_ids tensor, or the same tensor
    # changed in place, must get a mask of its own.
    torch.manual_seed(2)
    B, H, T, D, window = 2, 2, 17, 8, 5
    q, k, v = torch.randn(3, B, H, T, D, dtype=torch.float64)
    docs = make_docs("packed", B, T)
    for _ in range(2):  # the second call reuses the mask
        out = sliding_window_attention(q, k, v, window, sinks=1, impl="flex", doc_ids=docs)
        torch.testing.assert_close(out, reference(q, k, v, window, 1, 0, docs), rtol=1e-9, atol=1e-9)
    docs[0, 2:] = 5  # in place: same tensor, new documents
    out = sliding_window_attention(q, k, v, window, sinks=1, impl="flex", doc_ids=docs)
    torch.testing.assert_close(out, reference(q, k, v, window, 1, 0, docs), rtol=1e-9, atol=1e-9)
    other = make_docs("left_pad", B, T)
    out = sliding_window_attention(q, k, v, window, sinks=1, impl="flex", doc_ids=other)
    torch.testing.assert_close(out, reference(q, k, v, window, 1, 0, other), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("impl", ["simple", "chunked"])
def test_strided_inputs_and_later_keys(impl):
    # The model's q, k, v are transposed views of (B, T, H, D) tensors, and keys may go on past the last query.
    torch.manual_seed(3)
    B, Hq, Hkv, T, q_offset, S, D = 2, 4, 2, 11, 3, 19, 8
    q = torch.randn(B, T, Hq, D, dtype=torch.float64, requires_grad=True)
    k = torch.randn(B, S, Hkv, D, dtype=torch.float64, requires_grad=True)
    v = torch.randn(B, S, Hkv, D, dtype=torch.float64, requires_grad=True)
    args = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    out = sliding_window_attention(*args, 4, impl=impl, q_offset=q_offset)
    assert_same_with_gradients(out, reference(*args, 4, 0, q_offset, None), (q, k, v))


def test_key_spans_gradient_sums_the_overlaps():
    # Three pieces as the chunked path cuts them: a single span from key 0, overlapping spans of three blocks
    # each, and a single span that overlaps the last of them.
    torch.manual_seed(4)
    x = torch.randn(2, 23, 3, dtype=torch.float64, requires_grad=True)
    spans = [(0, 1, 4, 5), (1, 5, 3, 9), (17, 1, 2, 6)]  # (start, count, step, span)
    views = KeySpans.apply(x, spans)
    for view, (start, count, step, span) in zip(views, spans):
        for c in range(count):
            assert torch.equal(view[:, c], x[:, start + c * step:start + c * step + span])
    weights = [torch.randn_like(view) for view in views]
    got = torch.autograd.grad(sum((view * w).sum() for view, w in zip(views, weights)), x)[0]
    want = torch.zeros_like(x)
    for w, (start, count, step, span) in zip(weights, spans):
        for c in range(count):
            want[:, start + c * step:start + c * step + span] += w[:, c]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("sinks", [0, 2])  # the blocked path, and the path with a mask per block
def test_compiled_matches_chunked(sinks):
    torch.manual_seed(2)
    q = torch.randn(3, 4, 37, 8)
    k, v = torch.randn(2, 3, 2, 37, 8)
    want = sliding_window_attention(q, k, v, 5, sinks, impl="chunked")
    got = sliding_window_attention(q, k, v, 5, sinks, impl="compiled")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_document_starts():
    docs = torch.tensor([[-1, -1, 0, 0, 0, 1, 1, 2]])
    assert document_starts(docs).tolist() == [[0, 0, 2, 2, 2, 5, 5, 7]]


def test_bad_arguments():
    q = torch.randn(1, 3, 4, 8)
    k = torch.randn(1, 2, 4, 8)
    with pytest.raises(ValueError, match="multiple"):
        sliding_window_attention(q, k, k, 2)
    with pytest.raises(ValueError, match="window"):
        sliding_window_attention(k, k, k, 0)
    with pytest.raises(ValueError, match="impl"):
        sliding_window_attention(k, k, k, 2, impl="nope")
