"""Generation: Gumbel-max sampling's distribution, the decoding variants and continuous batching against the original
decoding loop, flex_attention's key-block counts, the decoder's cache freed on return, and the rollout benchmark's
smoke run."""
import functools
import gc
import os
import subprocess
import sys
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch._inductor.utils import run_and_get_code
from torch.nn.attention.flex_attention import create_mask

import model as model_module
from common import write_jsonl
from model import Config, Transformer, generate, generate_continuous, sample_next, save_checkpoint
from tokenizer import toy_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14], [20, 21, 22, 23], [30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40],
           [50, 51, 52]]
CONFIGS = {"window": dict(window=4), "window+sinks": dict(window=4, sinks=2), "full": dict(window=None),
           "hybrid": dict(window=3, sinks=1, full_layers=[1])}


def toy_model(**kw):
    model = Transformer(Config(n_layers=3, **kw)).init_weights(0).double().eval()
    for p in model.parameters():  # larger weights make attention sharp, so a wrong mask shows up in the tokens
        p.data *= 10
    return model


@torch.no_grad()
def original_generate(model, prompts, max_new_tokens, stop_tokens=()):
    """Greedy generation as model.generate did it before continuous batching: the whole prompts prefilled
    (left-padded), then one token per row per step through the per-layer decoding path, stopped rows fed as padding."""
    B, longest = len(prompts), max(map(len, prompts))
    idx = torch.zeros(B, longest, dtype=torch.long)
    doc_ids = torch.full((B, longest), -1, dtype=torch.long)
    for row, p in enumerate(prompts):
        idx[row, longest - len(p):] = torch.tensor(p)
        doc_ids[row, longest - len(p):] = 0
    cache = model.make_cache(B, longest + max_new_tokens)
    logits = model(idx, doc_ids=doc_ids, cache=cache, last_only=True)[:, -1]
    done = torch.zeros(B, dtype=torch.bool)
    tokens, logprobs = [[] for _ in prompts], [[] for _ in prompts]
    for _ in range(max_new_tokens):
        next_tokens, lp = logits.argmax(-1), F.log_softmax(logits, -1)
        for row in range(B):
            if not done[row]:
                tokens[row].append(int(next_tokens[row]))
                logprobs[row].append(float(lp[row, next_tokens[row]]))
        active = ~done
        done = done | torch.isin(next_tokens, torch.tensor(list(stop_tokens), dtype=torch.long))
        if done.all():
            break
        logits = model(next_tokens[:, None], doc_ids=torch.where(active, 0, -1)[:, None], cache=cache,
                       last_only=True)[:, -1]
    return tokens, logprobs


def stops_for(tokens):
    """Two stop tokens that end some rows early, at different steps."""
    return [tokens[0][4], tokens[3][9]]


def assert_same(got, want, abs=1e-6):
    (tokens, logprobs), (want_tokens, want_logprobs) = got, want
    assert tokens == want_tokens
    for lp, want_lp in zip(logprobs, want_logprobs):
        assert lp == pytest.approx(want_lp, abs=abs)


def chi2_threshold(dof, p):
    """x with P(chi-square with dof degrees of freedom > x) = p (bisection on the regularised upper gamma)."""
    lo, hi = 0.0, 1000.0
    for _ in range(100):
        mid = (lo + hi) / 2
        tail = torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64), torch.tensor(mid / 2))
        lo, hi = (mid, hi) if tail > p else (lo, mid)
    return hi


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, None, None), (0.6, None, None), (1.0, 3, None),
                                                     (1.3, None, 0.8)])
def test_gumbel_max_samples_softmax(temperature, top_k, top_p):
    """40k draws over 8 tokens follow softmax(logits / T), restricted to top_k / top_p and renormalised: a chi-square
    statistic below the level a correct sampler exceeds with probability 1e-9 (seeded, so the test is deterministic)."""
    logits = torch.tensor([0.3, -1.2, 2.0, 0.9, -0.4, 1.5, -2.5, 0.0])
    draws = 40_000
    tokens, logprobs = sample_next(logits.expand(draws, 8), temperature, top_k, top_p,
                                   torch.Generator().manual_seed(0))
    p = torch.softmax(logits / temperature, -1).double()
    torch.testing.assert_close(logprobs, torch.log_softmax(logits / temperature, -1)[tokens])
    keep = torch.ones(8, dtype=torch.bool)
    if top_k:
        keep &= p >= p.topk(top_k).values[-1]
    if top_p:
        order = p.argsort(descending=True)
        before = p[order].cumsum(0) - p[order]  # mass of the more likely tokens
        keep[order[before > top_p]] = False
    p = torch.where(keep, p, 0.0)
    p /= p.sum()
    counts = torch.bincount(tokens, minlength=8).double()
    assert counts[~keep].sum() == 0, "a token outside top_k / top_p was drawn"
    expected = p[keep] * draws
    chi2 = ((counts[keep] - expected) ** 2 / expected).sum().item()
    assert chi2 < chi2_threshold(int(keep.sum()) - 1, 1e-9), (chi2, counts, expected)


@pytest.mark.parametrize("impl,config", [(impl, config) for impl in ("per_layer", "sdpa", "math") for config in CONFIGS]
                         + [("flex", "window+sinks"), ("flex", "hybrid")])
def test_decoding_variants_match_the_original_loop(monkeypatch, impl, config):
    """Every decoding variant gives the original loop's greedy tokens and log-probabilities: left-padded prompts of
    different lengths (one of a single token), windows with and without sinks, full and hybrid attention, stop tokens.
    Off the GPU flex is flex_attention's exact reference implementation."""
    model = toy_model(**CONFIGS[config])
    monkeypatch.setattr(model_module, "DECODE_ATTENTION", "per_layer")
    free = original_generate(model, PROMPTS, 14)
    stopped = original_generate(model, PROMPTS, 14, stops_for(free[0]))
    monkeypatch.setattr(model_module, "DECODE_ATTENTION", impl)
    assert_same(generate(model, PROMPTS, 14), free)
    assert_same(generate(model, PROMPTS, 14, stop_tokens=stops_for(free[0])), stopped)
    if config != "full":
        model.set_window(None)
        assert generate(model, PROMPTS, 14)[0] != free[0], "the window must matter for this test to mean anything"


@pytest.mark.parametrize("impl,config", [("sdpa", "window+sinks"), ("math", "hybrid")])
def test_compiled_decoding_step_matches_the_original_loop(monkeypatch, impl, config):
    """SWARR_DECODE_COMPILE: the step compiled by inductor (its CPU code here) gives the original loop's greedy tokens,
    with stop tokens, in plain batches and with continuous batching (rows refilled mid-generation), its rows rounded up
    to a power of two so that batches of other sizes reuse the compiled step. Its fused
    float32 log-softmax sums in another order: log-probabilities agree to 1e-4. The new keys and values are written
    into the cache in place: no generated loop runs over a whole layer's cache (inductor turns a scatter_ into
    one that rewrites it)."""
    torch._dynamo.reset()
    model = toy_model(**CONFIGS[config])
    monkeypatch.setattr(model_module, "DECODE_ATTENTION", "per_layer")
    want = original_generate(model, PROMPTS, 14)
    stopped = original_generate(model, PROMPTS, 14, stops_for(want[0]))
    monkeypatch.setattr(model_module, "DECODE_ATTENTION", impl)
    monkeypatch.setattr(model_module, "DECODE_COMPILE", True)
    got, code = run_and_get_code(lambda: generate(model, PROMPTS, 14))
    assert_same(got, want, 1e-4)
    assert code, "the step was not compiled"
    cache = model.make_cache(len(PROMPTS), model_module.cache_length(PROMPTS, 14))
    for numel in {layer.k.numel() for layer in cache.layers}:
        assert f"{numel}L" not in "\n".join(code), f"a loop over a whole cache of {numel} elements"
    assert_same(generate(model, PROMPTS, 14, stop_tokens=stops_for(want[0])), stopped, 1e-4)
    assert_same(generate_continuous(model, PROMPTS, 14, slots=3, stop_tokens=stops_for(want[0]), min_refill=1), stopped,
                1e-4)  # 3 slots run as 4 rows, one of them idle
    # 6 prompts ran as 8 rows; 5 prompts take the same shape, so nothing is compiled again
    counters = torch._dynamo.utils.counters
    counters.clear()
    assert_same(generate(model, PROMPTS[:5], 14), tuple(part[:5] for part in want), 1e-4)
    assert counters["stats"]["unique_graphs"] == 0


def test_compiled_decoding_step_compiles_once_per_row_count(monkeypatch):
    """The compiled step is compiled once for each row count and then reused by every call with that count, whatever
    else differs: how many prompts (rounded up to the same rows; continuous batching keeps all its slots, however
    few prompts are left for them), which prompts and how long, a new decoder and cache,
    a cache's first step and the steps after it; sampling with a generator does not split it into several graphs.
    Dynamo's guards decide what is compiled again whatever the backend: the eager backend leaves out inductor's code
    generation, seconds per graph."""
    torch._dynamo.reset()
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    monkeypatch.setattr(model_module, "DECODE_COMPILE", True)
    model = toy_model(**CONFIGS["hybrid"])  # two slot layouts, each with a DecodeStep of its own
    sampling = dict(temperature=1.0, top_p=0.9, stop_tokens=[7], generator=torch.Generator().manual_seed(0))
    counters = torch._dynamo.utils.counters
    counters.clear()
    generate_continuous(model, PROMPTS, 14, slots=8, **sampling)  # 6 prompts on 8 rows
    generate_continuous(model, [p + [60, 61, 62] for p in PROMPTS[1:]], 14, slots=8, min_refill=1, **sampling)
    generate_continuous(model, PROMPTS[:2], 14, slots=8, **sampling)  # 2 prompts: still 8 rows (RL's later rounds)
    generate(model, PROMPTS[::-1] + [[70]], 14, **sampling)  # 7 prompts
    assert counters["stats"]["unique_graphs"] == 1
    generate(model, PROMPTS[:3], 14, **sampling)  # 4 rows: a shape of its own
    assert counters["stats"]["unique_graphs"] == 2


@pytest.mark.parametrize("config", CONFIGS)
def test_flex_block_counts_cover_every_allowed_key(monkeypatch, config):
    """On a GPU flex_attention reads only the first kv_num_blocks key blocks of a row; off it, the reference reads all.
    With that limit applied here on top of the mask, and blocks of 4 slots, tokens are still the original's: the counts
    never leave out a key a row may attend."""
    model = toy_model(**CONFIGS[config])
    monkeypatch.setattr(model_module, "DECODE_ATTENTION", "per_layer")
    want = original_generate(model, PROMPTS, 14)

    def block_limited(q, k, v, block_mask):
        B, Q, n = q.shape[0], q.shape[2], k.shape[2]
        limit = torch.arange(n) < block_mask.kv_num_blocks.view(B, 1) * model_module.FLEX_DECODE_BLOCK
        mask = create_mask(block_mask.mask_mod, B, 1, Q, n, device="cpu") & limit[:, None, None, :]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    monkeypatch.setattr(model_module, "DECODE_ATTENTION", "flex")
    monkeypatch.setattr(model_module, "FLEX_DECODE_BLOCK", 4)
    monkeypatch.setattr(model_module, "_flex_decode", block_limited)
    assert_same(generate(model, PROMPTS, 14), want)


def test_compiled_flex_decoding_reads_the_buffers_it_is_given():
    """The compiled kernel (here inductor's CPU one) follows the block counts and the allowed-slot buffer as they are
    when it runs, both overwritten in place between calls, without recompiling (a CUDA graph replays it so)."""
    B, H, G, n, D = 3, 2, 3, 300, 16
    torch.manual_seed(0)
    allowed = torch.rand(B, n) > 0.3
    block_mask = model_module.flex_decode_mask(allowed, G)
    q, k, v = torch.randn(B, H, G, D), torch.randn(B, H, n, D), torch.randn(B, H, n, D)
    flex = model_module._compiled_flex_decode()
    for blocks in ([1, 2, 3], [3, 1, 2]):
        allowed.copy_(torch.rand(B, n) > 0.5)
        block_mask.kv_num_blocks.copy_(torch.tensor(blocks).view(B, 1, 1))
        limit = torch.arange(n) < block_mask.kv_num_blocks.view(B, 1) * model_module.FLEX_DECODE_BLOCK
        mask = (allowed & limit)[:, None, None, :]
        want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        torch.testing.assert_close(flex(q, k, v, block_mask), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("config,slots,min_refill,lag", [("window+sinks", 2, 1, 0), ("window+sinks", 2, 1, 1),
                                                         ("full", 2, 1, 1), ("hybrid", 4, 2, 1),
                                                         ("window", 3, None, 0)])
def test_continuous_batching_matches_generate(monkeypatch, config, slots, min_refill, lag):
    """Fewer rows than prompts: prompts start while other rows are mid-generation, rows stop at stop tokens at
    different steps, and every prompt gets generate's greedy tokens and log-probabilities. lag 1: the host learns of
    stopped rows a step late, as on a GPU."""
    init = model_module.Decoder.__init__

    def lagged(self, *args, **kw):
        init(self, *args, **kw)
        self.lag = lag

    monkeypatch.setattr(model_module.Decoder, "__init__", lagged)
    model = toy_model(**CONFIGS[config])
    stops = stops_for(generate(model, PROMPTS, 14)[0])
    want = generate(model, PROMPTS, 14, stop_tokens=stops)
    assert len({len(t) for t in want[0]}) > 2, "rows must stop at different steps"
    got = generate_continuous(model, PROMPTS, 14, slots, stop_tokens=stops, min_refill=min_refill)
    assert_same(got, want)


@pytest.mark.parametrize("run", ["generate", "generate_continuous"])
def test_decoding_frees_its_cache_on_return(monkeypatch, run):
    """The decoder's cache is freed when generation returns, not at Python's next garbage collection: on a GPU, the
    caches of batches run one after another would otherwise pile up (a full-attention cache of 1024 rows is
    gigabytes)."""
    caches, make_cache = [], Transformer.make_cache

    def recorded(self, *args, **kw):
        cache = make_cache(self, *args, **kw)
        caches.append(weakref.ref(cache.layers[0].k))
        return cache

    monkeypatch.setattr(Transformer, "make_cache", recorded)
    model = toy_model(window=4, sinks=1)
    go = generate if run == "generate" else functools.partial(generate_continuous, slots=2)
    gc.collect()
    gc.disable()  # nothing is freed but by reference counting
    try:
        go(model, PROMPTS, 5)
        assert caches and all(ref() is None for ref in caches)
    finally:
        gc.enable()


def test_sampled_log_probabilities_are_the_trainers():
    """Sampled tokens (top_p too) come with their log-probabilities under softmax(logits / T) of the whole sequence's
    forward pass, as rl.py recomputes them; the same seed gives the same tokens."""
    model = toy_model(window=4, sinks=1)
    for run in (generate, lambda *a, **kw: generate_continuous(*a, slots=2, min_refill=1, **kw)):
        sampling = dict(temperature=0.7, top_p=0.9)
        tokens, logprobs = run(model, PROMPTS, 10, **sampling, generator=torch.Generator().manual_seed(1))
        again, _ = run(model, PROMPTS, 10, **sampling, generator=torch.Generator().manual_seed(1))
        assert tokens == again
        for prompt, out, lp in zip(PROMPTS, tokens, logprobs):
            full = torch.log_softmax(model(torch.tensor([prompt + out]))[0] / 0.7, -1)
            want = [full[len(prompt) - 1 + t, tok].item() for t, tok in enumerate(out)]
            assert lp == pytest.approx(want, abs=1e-5)


def test_rollout_benchmark_smoke(tmp_path):
    """bench/rollout.py end to end with tiny sizes on the CPU, the exactness check on a saved checkpoint included."""
    tok = toy_tokenizer()
    save_checkpoint(str(tmp_path / "ckpt"), Transformer(Config(vocab_size=tok.vocab_size, n_layers=2)).init_weights(0),
                    tok, {"stage": "sft", "parent": None, "args": {}, "metrics": {}})
    write_jsonl(str(tmp_path / "test.jsonl"), [{"id": f"p{i}", "question": f"What is {i} + {i}?", "answer": str(2 * i),
                                                "solution": "", "instruction": ""} for i in range(5)])
    result = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "rollout.py"), "--smoke", "--exact-ckpt",
                             str(tmp_path / "ckpt"), "--exact-data", str(tmp_path / "test.jsonl"), "--exact-window", "8",
                             "--limit", "40"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| compiled math | 5 of 5 |" in result.stdout, result.stdout
    # in float32 the float32 reference is the eager path itself: every row identical to both
    assert "| per_layer, eager | 5 of 5 | 100.0% | 0 | 5 of 5 | 100.0% |" in result.stdout, result.stdout
    for heading in ("Decoding step", "Exactness", "Sampling one token", "vs full attention, SmolLM2",
                    "Qwen2.5-1.5B shape", "Continuous batching"):
        assert heading in result.stdout, result.stdout
    # --variants picks the step variants; a section left out prints nothing
    result = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "rollout.py"), "--smoke", "--variants",
                             "sdpa,compiled-math", "--skip", "sampling,fair,qwen,continuous,exact"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split("|")[1:3] for line in result.stdout.splitlines() if line.startswith("| ") and "ms" not in line]
    assert [(p.strip(), a.strip()) for p, a in rows] == [("original", "per_layer"), ("new", "sdpa"),
                                                         ("compiled", "math")]
    assert "Exactness" not in result.stdout and "Sampling one token" not in result.stdout
