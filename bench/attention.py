"""
Times every attention path against full causal SDPA and flex_attention: forward, forward+backward, peak memory.

    python bench/attention.py                  # one GPU, bf16, B=1 H=16 D=128, T in 4k/16k/64k, window 512/4096
    python bench/attention.py --kv-heads 4     # the same with grouped-query attention (16 query heads, 4 key heads)
    python bench/attention.py --smoke          # tiny sizes, runs anywhere (checks the script, not speed)

First it checks every path on the device, gradients included (flex_attention has no CPU backward, so this is
where its gradients are verified), against the dense SDPA path in float32, and the chunked path in the timed
dtype too. Then one table row per (T, window, path): milliseconds, peak memory, and ratios to flex_attention
and to full causal SDPA. The paths take turns call by call (CUDA events, medians), so that paths running the same
kernel (auto and flex at long lengths) time alike.
"""
import argparse
import functools
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from swa_attention import sliding_window_attention  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--lengths", default="4096,16384,65536", help="sequence lengths T, comma-separated")
parser.add_argument("--windows", default="512,4096", help="windows, comma-separated")
parser.add_argument("--paths", default="auto,chunked,compiled,sdpa,flex", help="paths to time")
parser.add_argument("--heads", type=int, default=16, help="query heads")
parser.add_argument("--kv-heads", type=int, default=None, help="key/value heads (default: as many as query heads)")
parser.add_argument("--head-dim", type=int, default=128, help="head dimension")
parser.add_argument("--iters", type=int, default=15, help="timed rounds (one call of every path each)")
parser.add_argument("--smoke", action="store_true", help="tiny sizes on whatever device is present")
args = parser.parse_args()

device = "cuda" if torch.cuda.is_available() else "cpu"
dtype = torch.bfloat16 if device == "cuda" else torch.float32
if args.smoke:
    args.lengths, args.windows, args.heads, args.head_dim, args.iters = "256", "32", 2, 16, 2
    args.kv_heads = 1 if args.kv_heads else None
    if device == "cpu":
        args.paths = "auto,chunked,sdpa"  # flex and torch.compile on a CPU are slow to build and not what we time
paths = args.paths.split(",")
kv_heads = args.kv_heads or args.heads


def sync():
    if device == "cuda":
        torch.cuda.synchronize()


def elapsed_ms(fn):
    """Milliseconds one call of fn takes on the device (CUDA events; the wall clock on a CPU)."""
    sync()
    if device != "cuda":
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1000
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    sync()
    return start.elapsed_time(end)


def measure(paths, inputs):
    """{path: (forward ms, forward+backward ms, peak GiB of the forward pass)}, or None where a path ran out of memory.

    The paths take turns, one call each per round, and each gets the median of its rounds: a drift in clocks or
    temperature then reaches every path alike, which matters when two paths run the same kernel."""
    grad = torch.randn_like(inputs[0])

    def forward(fn):
        with torch.no_grad():
            fn(*inputs)

    def forward_backward(fn):
        torch.autograd.grad(fn(*inputs), inputs, grad)

    results = {}
    for name, fn in paths.items():
        try:
            for _ in range(2):  # warm up: compilation, block masks, allocator
                forward(fn)
                forward_backward(fn)
            sync()
            if device == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            forward(fn)
            peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
            results[name] = ([], [], peak)
        except torch.OutOfMemoryError:
            results[name] = None
    for _ in range(args.iters):
        for name, fn in paths.items():
            if results[name] is not None:
                results[name][0].append(elapsed_ms(lambda: forward(fn)))
                results[name][1].append(elapsed_ms(lambda: forward_backward(fn)))
    return {name: r and (statistics.median(r[0]), statistics.median(r[1]), r[2]) for name, r in results.items()}


# 1. Correctness on this device, gradients included.
print(f"device: {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}, torch {torch.__version__}")


def check(title, impls, B, Hq, Hkv, T, S, D, window, sinks, packed, check_dtype):
    """Each path against the dense SDPA path in float32, outputs and gradients, the path running in check_dtype.
    In float32 the largest difference is printed; in a low precision, it is divided by the largest reference value."""
    torch.manual_seed(0)
    q = torch.randn(B, Hq, T, D, device=device, requires_grad=True)
    k, v = (torch.randn(B, Hkv, S, D, device=device, requires_grad=True) for _ in range(2))
    docs = None
    if packed:
        docs = torch.zeros(B, S, dtype=torch.long, device=device)
        docs[0, 100:] = 1
        docs[1, :20] = -1
    g = torch.randn(B, Hq, T, D, device=device)
    want = sliding_window_attention(q, k, v, window, sinks, impl="sdpa", q_offset=S - T, doc_ids=docs)
    want_grads = torch.autograd.grad((want * g).sum(), (q, k, v))
    exact = check_dtype == torch.float32
    print(f"check against dense SDPA ({title}):")
    for impl in impls:
        got = sliding_window_attention(*(x.to(check_dtype) for x in (q, k, v)), window, sinks, impl=impl,
                                       q_offset=S - T, doc_ids=docs)
        grads = torch.autograd.grad((got.float() * g).sum(), (q, k, v))
        err = max((a.float() - b).abs().max().item() / (1 if exact else b.abs().max().item())
                  for a, b in zip((got, *grads), (want, *want_grads)))
        print(f"  {impl:9s} max |difference|{'' if exact else ' / max |reference|'} (output and gradients) = {err:.2e}")
        assert err < (2e-3 if exact else 3e-2), f"{impl} disagrees with the dense reference"


check("float32, GQA 8/2, window 48, sinks 4, query offset 37, packed + padded rows",
      paths, 2, 8, 2, 300, 337, 64, 48, 4, True, torch.float32)
# No documents and no sinks: the chunked path's blocks (a head, whole blocks, a tail) under one shared mask.
check("float32, GQA 8/2, window 48, query offset 37", paths, 2, 8, 2, 300, 337, 64, 48, 0, False, torch.float32)
# The chunked paths in the timed dtype, at the timed head count and head size, with and without GQA.
gqa_heads = kv_heads if kv_heads != args.heads else max(1, args.heads // 4)
for Hkv in args.heads, gqa_heads:
    check(f"{str(dtype).replace('torch.', '')}, heads {args.heads}/{Hkv}, window 64, 1000 queries",
          [impl for impl in paths if impl in ("chunked", "compiled")],
          1, args.heads, Hkv, 1000, 1000, args.head_dim, 64, 0, False, dtype)

# 2. Timings.
print(f"\nB=1, H={args.heads}, key/value heads {kv_heads}, D={args.head_dim}, {str(dtype).replace('torch.', '')}; "
      f"ms are medians of {args.iters} rounds")
print(f"{'T':>6} {'window':>6} {'path':>10} | {'fwd ms':>8} {'fwd+bwd ms':>10} {'peak GiB':>8} | "
      f"{'fwd/flex':>8} {'f+b/flex':>8} {'mem/flex':>8} | {'causal/fwd':>10} {'causal/f+b':>10}")
for T in map(int, args.lengths.split(",")):
    q = torch.randn(1, args.heads, T, args.head_dim, device=device, dtype=dtype, requires_grad=True)
    k = torch.randn(1, kv_heads, T, args.head_dim, device=device, dtype=dtype, requires_grad=True)
    v = torch.randn_like(k, requires_grad=True)
    gqa = kv_heads != args.heads
    causal = measure({"causal": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                                               enable_gqa=gqa)}, (q, k, v))["causal"]
    print(f"{T:>6} {'full':>6} {'sdpa-causal':>10} | {causal[0]:>8.2f} {causal[1]:>10.2f}")
    for window in map(int, args.windows.split(",")):
        results = measure({impl: functools.partial(sliding_window_attention, window=window, impl=impl)
                           for impl in paths}, (q, k, v))
        base = results.get("flex")
        for impl, r in results.items():
            if r is None:
                print(f"{T:>6} {window:>6} {impl:>10} | out of memory")
                continue
            fwd, fb, peak = r
            rel = (f"{fwd / base[0]:>8.2f} {fb / base[1]:>8.2f} {peak / base[2]:>8.2f}" if base
                   else f"{'':>8} {'':>8} {'':>8}")
            print(f"{T:>6} {window:>6} {impl:>10} | {fwd:>8.2f} {fb:>10.2f} {peak:>8.2f} | {rel} | "
                  f"{causal[0] / fwd:>10.1f} {causal[1] / fb:>10.1f}")
    del q, k, v
