"""
Rollout (generation) speed of model.py's decoding, section by section, every ratio measured in this one run:

  step        The decoding step at batch 1024, window 512, SmolLM2-135M's shape (dim 576, 30 layers, 9 heads, 3
              key/value heads, vocabulary 49152): the original path (every layer builds its mask and calls SDPA,
              sampling with torch.multinomial outside the CUDA graph) and each model.DECODE_ATTENTION variant
              (sampling inside the graph), sdpa and math also compiled (model.DECODE_COMPILE; --variants picks),
              in ms per step against the step's memory floor: the bytes it must move (the cache slots it attends,
              the weights, the float32 logits written once and read once) at the device-to-device copy bandwidth
              measured here (bytes read + written per second). --profile prints each variant's kernels.
  exact       Greedy completions of each step variant, graphed, against the original path run eagerly: random weights
              (64 rows, past the ring's first wrap), and with --exact-ckpt a trained model on real problems (stop
              tokens on), whose logits are far from the near-ties of random weights. Also against the original path
              run eagerly in float32, the computation every bf16 variant rounds.
  sampling    One sampling call on batch x vocabulary float32 logits: the original sample_next and model.sample_next.
  fair        Sliding window against full attention for 1k-16k-token completions at SmolLM2-135M's shape: the window
              (ring cache), full attention over every slot of a cache sized for the completion (static, as before),
              and full attention over each row's filled prefix only (flex_attention skips the key blocks a row has not
              reached). Batch: the largest power of two up to --max-batch that fits (a doubling search that catches
              out-of-memory).
  qwen        The same at Qwen2.5-1.5B's shape (dim 1536, 28 layers, 12 heads, 2 key/value heads of 128, SwiGLU 8960,
              vocabulary 151936, qkv bias, rope theta 1e6, tied embeddings), window 4096, 8k and 16k completions.
  continuous  Generation with stop tokens, RL-like: model.generate_continuous over --slots rows against plain batches
              of --slots prompts (generate), tokens/s. Completion lengths follow the GSM8K RL runs of SmolLM2
              (results/smollm2-gsm8k/*-rl/metrics.jsonl, 384-token limit): a completion is truncated at the limit with
              the runs' mean truncated fraction, otherwise its length is drawn from a Gamma distribution of shape 2
              whose mean makes the overall mean the runs' mean completion length (drawn again at the limit).
              Each prompt's last token is its drawn length L; a thin subclass of the model reads it when a row feeds
              that token (the first decoding step of every prompt) and sets the stop token's logit to +1e4 at the step
              that samples the row's L-th token and to -1e4 before, so that rows stop exactly there.
  hf          (--hf) The same weights in Hugging Face transformers' LlamaForCausalLM.generate, full attention.

Random bf16 weights, sampling at temperature 1. A step is timed as model.generate runs it: one CUDA graph replay
(forward pass, sampling and bookkeeping) and a poll of which rows stopped. A completion's rate is the batch over the
mean step time over the completion, from steps timed at its start, middle and end (a step's cost grows linearly with the
filled prefix, for full attention; (start + 2 middle + end) / 4 is its mean); the cache is brought to each point by
writing slot positions directly (`fast_forward`: keys and values are not computed, as the time of a step does not
depend on them).

    python bench/rollout.py                          # one GPU, about 5-6 minutes on an H200 (estimates printed)
    python bench/rollout.py --skip qwen,fair         # leave sections out
    python bench/rollout.py --skip qwen,fair,continuous --profile --exact-ckpt ckpt/base   # the step's kernels, and
                                                     # exactness with trained weights on GSM8K (window 64, stop tokens)
    python bench/rollout.py --skip exact,sampling,fair,qwen,continuous --variants sdpa,compiled-math   # two variants
    python bench/rollout.py --smoke                  # tiny sizes on the CPU: checks the script end to end
"""
import argparse
import copy
import gc
import glob
import json
import os
import random
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import model as model_module  # noqa: E402
from common import build_prompt  # noqa: E402
from model import (Config, Decoder, Transformer, cuda_graphed, generate, generate_continuous,  # noqa: E402
                   load_checkpoint, sample_next)

SECTIONS = ("step", "exact", "sampling", "fair", "qwen", "continuous")
# the step section's variants: (model.DECODE_ATTENTION, model.DECODE_COMPILE)
VARIANTS = (("per_layer", False), ("sdpa", False), ("math", False), ("flex", False), ("sdpa", True), ("math", True))


def variant_name(impl, compiled):
    return f"compiled-{impl}" if compiled else impl


parser = argparse.ArgumentParser(description="rollout speed: decoding step, SWA vs full attention, continuous batching")
parser.add_argument("--skip", default="", help=f"sections to leave out, comma-separated: {', '.join(SECTIONS)}")
parser.add_argument("--variants", default=",".join(variant_name(*v) for v in VARIANTS),
                    help="step variants the step and exact sections run, comma-separated")
parser.add_argument("--hf", action="store_true", help="also time Hugging Face transformers' generate")
parser.add_argument("--batch", type=int, default=1024, help="batch of the step section")
parser.add_argument("--window", type=int, default=512, help="sliding window at SmolLM2's shape")
parser.add_argument("--lengths", default="1024,4096,8192,16384", help="completion lengths of the fair section")
parser.add_argument("--max-batch", type=int, default=1024, help="largest batch tried at SmolLM2's shape")
parser.add_argument("--qwen-window", type=int, default=4096, help="sliding window at Qwen2.5-1.5B's shape")
parser.add_argument("--qwen-lengths", default="8192,16384", help="completion lengths of the qwen section")
parser.add_argument("--qwen-max-batch", type=int, default=2048, help="largest batch tried at Qwen2.5-1.5B's shape")
parser.add_argument("--prompt-len", type=int, default=16, help="prompt tokens per row (random ids)")
parser.add_argument("--steps", type=int, default=12, help="timed decoding steps per measurement")
parser.add_argument("--slots", type=int, default=512, help="rows of the continuous section")
parser.add_argument("--rollouts", type=int, default=2048, help="completions generated in the continuous section")
parser.add_argument("--limit", type=int, default=384, help="completion length limit of the continuous section")
parser.add_argument("--rl-prompt-len", type=int, default=128, help="prompt tokens of the continuous section")
parser.add_argument("--hf-batch", type=int, default=64, help="batch of the Hugging Face comparison")
parser.add_argument("--hf-length", type=int, default=1024, help="completion length of the Hugging Face comparison")
parser.add_argument("--smoke", action="store_true", help="tiny models and sizes on the CPU")
parser.add_argument("--profile", action="store_true", help="print each step variant's kernels (torch.profiler)")
parser.add_argument("--exact-ckpt", default=None, help="a trained checkpoint: the exact section also checks each "
                    "variant's greedy completions with it, on real problems")
parser.add_argument("--exact-data", default="data/gsm8k/test.jsonl", help="the problems of --exact-ckpt's check")
parser.add_argument("--exact-window", type=int, default=64, help="the window of --exact-ckpt's check")
args = parser.parse_args()
skip = {s for s in args.skip.split(",") if s}
if skip - set(SECTIONS):
    parser.error(f"unknown sections {sorted(skip - set(SECTIONS))}")
variants = [v for v in VARIANTS if variant_name(*v) in args.variants.split(",")]
if len(variants) != len(set(args.variants.split(","))):
    parser.error(f"--variants: choose from {', '.join(variant_name(*v) for v in VARIANTS)}")

device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
cuda = device.type == "cuda"
dtype = torch.bfloat16 if cuda else torch.float32
SMOLLM2 = dict(vocab_size=49152, dim=576, n_layers=30, n_heads=9, n_kv_heads=3, hidden_dim=1536, rope_theta=100000.0,
               tie_embeddings=True)
QWEN = dict(vocab_size=151936, dim=1536, n_layers=28, n_heads=12, n_kv_heads=2, head_dim=128, hidden_dim=8960,
            norm_eps=1e-6, rope_theta=1000000.0, tie_embeddings=True, qkv_bias=True)
if args.smoke:
    SMOLLM2 = dict(vocab_size=512, dim=64, n_layers=2, n_heads=6, n_kv_heads=2, head_dim=16, hidden_dim=128)
    QWEN = dict(vocab_size=640, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=32, hidden_dim=96,
                qkv_bias=True, tie_embeddings=True)
    args.batch, args.window, args.lengths, args.max_batch = 4, 16, "40", 4
    args.qwen_window, args.qwen_lengths, args.qwen_max_batch = 24, "40", 4
    args.prompt_len, args.steps, args.slots, args.rollouts, args.limit, args.rl_prompt_len = 4, 2, 4, 10, 24, 6
    args.hf_batch, args.hf_length = 2, 8
name = torch.cuda.get_device_name() if cuda else "CPU"
print(f"{name}, torch {torch.__version__}, {dtype}; decoding attention default: "
      f"{model_module.decode_impl()}")


def sync():
    if cuda:
        torch.cuda.synchronize()


def timed(fn, n):
    """Mean seconds of fn() over n calls, after one more untimed."""
    fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    sync()
    return (time.perf_counter() - t0) / n


def free_memory():
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()


def copy_bandwidth():
    """Bytes read + written per second by a large device-to-device copy."""
    n = (2 << 30 if cuda else 64 << 20) // 2
    src = torch.randn(n, device=device, dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    return 2 * n * 2 / timed(lambda: dst.copy_(src), 10)


def build(config_kw, window):
    torch.manual_seed(0)
    model = Transformer(Config(**config_kw, window=window)).init_weights(0).to(device=device, dtype=dtype).eval()
    return model


def fast_forward(cache, length):
    """Make every row of the cache look as if it had seen `length` tokens: slot positions as decoding would have left
    them. Keys and values are left as they are: the time of a step does not depend on them."""
    for layer in cache.layers:
        p = torch.arange(length, device=device)
        if layer.ring:
            p = p[(p < layer.sinks) | (p >= length - layer.window)]
            slots = torch.where(p < layer.sinks, p, layer.sinks + (p - layer.sinks) % layer.window)
        else:
            slots = p
        row = torch.full((layer.n_slots + 1,), -1, dtype=torch.long, device=device)
        row[slots] = p
        layer.positions.copy_(row.expand_as(layer.positions))
    cache.seen.fill_(length)


def random_prompts(batch, length, vocab, seed=0):
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed)).tolist()


def new_decoder(model, batch, cache_len, graph=True):
    g = torch.Generator(device).manual_seed(0)
    dec = Decoder(model, batch, cache_len, cache_len, temperature=1.0, generator=g, cuda_graph=graph)
    dec.load(list(range(batch)), random_prompts(batch, args.prompt_len, model.config.vocab_size))
    return dec


def decoder_step(dec):
    dec.step()
    dec.poll()


def step_ms(dec, fill):
    """ms per decoding step with the rows at position `fill` (the first steps also capture the graph)."""
    fast_forward(dec.cache, fill)
    for _ in range(3):
        decoder_step(dec)
    return timed(lambda: decoder_step(dec), args.steps) * 1e3


def floor_ms(model, batch, fill, cache, bandwidth):
    """The least time a step at position `fill` can take: the bytes it must move at the copy bandwidth."""
    c = model.config
    element = model.embed_tokens.weight.element_size()
    slots = sum(min(fill + 1, layer.n_slots) for layer in cache.layers)  # the slots holding keys it attends
    cache_bytes = batch * slots * c.n_kv_heads * c.head_dim * 2 * element
    weights = model.num_params() * element
    logits = batch * c.vocab_size * 4 * 2
    return (cache_bytes + weights + logits) / bandwidth * 1e3


def with_attention(impl, compiled=False):
    model_module.DECODE_ATTENTION, model_module.DECODE_COMPILE = impl, compiled


def profile(dec, label):
    """The GPU kernels of a few graph replays, largest total time first."""
    from torch.profiler import ProfilerActivity
    with torch.profiler.profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(4):
            decoder_step(dec)
        sync()
    print(f"\nkernels of 4 steps, {label}:")
    print(prof.key_averages().table(sort_by="cuda_time_total" if cuda else "cpu_time_total", row_limit=14,
                                    max_name_column_width=70))


def original_sample_next(logits, temperature, top_k, top_p, generator):
    """model.sample_next before this benchmark's changes: log-softmax, softmax and torch.multinomial."""
    logprobs = F.log_softmax(logits / (temperature if temperature > 0 else 1.0), dim=-1)
    if temperature <= 0:
        tokens = logits.argmax(-1)
    else:
        filtered = logprobs.clone()
        if top_k:
            kth = filtered.topk(min(top_k, filtered.shape[-1]), dim=-1).values[:, -1:]
            filtered[filtered < kth] = float("-inf")
        if top_p is not None and top_p < 1.0:
            sorted_lp, order = filtered.sort(dim=-1, descending=True)
            cum = sorted_lp.softmax(-1).cumsum(-1)
            drop = cum - sorted_lp.softmax(-1) > top_p
            filtered.scatter_(-1, order, sorted_lp.masked_fill(drop, float("-inf")))
        tokens = torch.multinomial(filtered.softmax(-1), 1, generator=generator).squeeze(-1)
    return tokens, logprobs.gather(-1, tokens[:, None]).squeeze(-1)


def original_step_ms(model, dec, fill):
    """ms per step of the original decoding loop: the forward pass as a CUDA graph (per-layer masks), then sampling
    outside it, the stop check read back every step."""
    out = {}

    def forward():
        out["logits"] = model(dec.feed, doc_ids=dec.feed_doc, cache=dec.cache, last_only=True)[:, -1]

    forward_step = cuda_graphed(forward, device) if cuda else forward
    g = torch.Generator(device).manual_seed(0)
    stop = torch.tensor([model.config.vocab_size - 1], device=device)
    done = torch.zeros(dec.feed.shape[0], dtype=torch.bool, device=device)

    def step():
        forward_step()
        tokens, _ = original_sample_next(out["logits"], 1.0, None, None, g)
        done.logical_or_(torch.isin(tokens, stop))
        bool(done.all())
        dec.feed.copy_(tokens[:, None])

    fast_forward(dec.cache, fill)
    for _ in range(3):
        step()
    return timed(step, args.steps) * 1e3


def agreement(tokens, logprobs, ref_tokens, ref_logprobs):
    """(rows identical to the reference, share of its tokens matched before each row's first difference, the largest
    log-prob gap over those tokens)."""
    same = sum(a == b for a, b in zip(tokens, ref_tokens))
    agree = [next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
             for a, b in zip(tokens, ref_tokens)]  # per row, the tokens before the first difference
    gap = max((abs(x - y) for a, b, n in zip(logprobs, ref_logprobs, agree) for x, y in zip(a[:n], b[:n])),
              default=0.0)
    return same, sum(agree) / sum(len(t) for t in ref_tokens), gap


def exactness(model, prompts, length, stop_tokens=()):
    """A table row per step variant: its greedy completions, graphed, against the original path run eagerly, and
    against that path run in float32 (on a bf16 model: how far each variant's rounding takes it from the
    computation they all approximate)."""
    with_attention("per_layer")
    reference = generate(model, prompts, length, stop_tokens=stop_tokens, cuda_graph=False)
    model32 = copy.deepcopy(model).float() if dtype != torch.float32 else model
    reference32 = generate(model32, prompts, length, stop_tokens=stop_tokens, cuda_graph=False)
    del model32
    print("| path | rows with identical tokens | tokens identical before the first difference | max log-prob gap "
          "| float32: identical rows | float32: tokens before the first difference |")
    print("|---|---|---|---|---|---|")
    same32, share32, _ = agreement(*reference, *reference32)
    print(f"| per_layer, eager | {len(prompts)} of {len(prompts)} | 100.0% | 0 | {same32} of {len(prompts)} "
          f"| {share32:.1%} |")
    for impl, compiled in variants:
        with_attention(impl, compiled)
        tokens, logprobs = generate(model, prompts, length, stop_tokens=stop_tokens)
        same, share, gap = agreement(tokens, logprobs, *reference)
        same32, share32, _ = agreement(tokens, logprobs, *reference32)
        label = f"{'compiled ' if compiled else ''}{impl}"
        print(f"| {label} | {same} of {len(prompts)} | {share:.1%} | {gap:.2e} | {same32} of {len(prompts)} "
              f"| {share32:.1%} |")


def section(title, estimate_s):
    print(f"\n## {title}" + (f" (about {estimate_s:.0f} s on an H200)" if cuda else ""), flush=True)
    return time.perf_counter()


def done_in(t0):
    print(f"({time.perf_counter() - t0:.0f} s)", flush=True)


bandwidth = copy_bandwidth()
free_memory()
print(f"device-to-device copy: {bandwidth / 1e12:.2f} TB/s (bytes read + written)")

# -- the decoding step -------------------------------------------------------------------------------------------
if "step" not in skip:
    t0 = section(f"Decoding step: batch {args.batch}, window {args.window}, SmolLM2-135M shape", 45)
    model = build(SMOLLM2, args.window)
    cache_len = args.prompt_len + 2 * args.window
    fill = args.prompt_len + args.window + 8  # the ring is full: every step attends `window` keys
    print(f"ms per step with the rows at position {fill}; the floor moves the attended cache slots, the weights "
          f"and the logits at {bandwidth / 1e12:.2f} TB/s")
    print("| path | attention | sampling | ms/step | tokens/s | floor ms | step / floor |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    with_attention("per_layer")
    dec = new_decoder(model, args.batch, cache_len)
    rows.append(("original", "per_layer", "multinomial, outside the graph", original_step_ms(model, dec, fill)))
    floor = floor_ms(model, args.batch, fill, dec.cache, bandwidth)
    del dec
    free_memory()
    for impl, compiled in variants:
        with_attention(impl, compiled)
        dec = new_decoder(model, args.batch, cache_len)
        rows.append(("compiled" if compiled else "new", impl, "Gumbel-max, in the graph", step_ms(dec, fill)))
        if args.profile:
            profile(dec, f"{rows[-1][0]} {impl}")
        del dec
        free_memory()
    for path, impl, sampling, ms in rows:
        print(f"| {path} | {impl} | {sampling} | {ms:.2f} | {args.batch / ms * 1e3:,.0f} | {floor:.2f} | "
              f"{ms / floor:.1f}x |")
    with_attention("auto")
    del model
    free_memory()
    done_in(t0)

# -- exactness ---------------------------------------------------------------------------------------------------
if "exact" not in skip:
    t0 = section("Exactness: greedy tokens of each step variant, graphed, against the original path run eagerly", 60)
    model = build(SMOLLM2, args.window)
    prompts = torch.randint(0, SMOLLM2["vocab_size"], (64, args.prompt_len), generator=torch.Generator().manual_seed(1))
    prompts = [p[:args.prompt_len - i % 4].tolist() for i, p in enumerate(prompts)]  # left padding of 0-3 tokens
    length = args.window + 64  # past the ring's first wrap
    print(f"greedy completions of {length} tokens, 64 rows, random weights (window {args.window})")
    exactness(model, prompts, length)
    del model
    if args.exact_ckpt:  # a trained model's logits are far from ties, unlike random weights'
        real, tokenizer, _ = load_checkpoint(args.exact_ckpt, device=device, dtype=dtype)
        real.eval().set_window(args.exact_window, 4)
        with open(args.exact_data) as f:
            problems = [json.loads(line) for line in f][:256]
        prompts = [build_prompt(tokenizer, problem) for problem in problems]
        print(f"\ngreedy completions of up to {args.limit} tokens (stop tokens on), {args.exact_ckpt} at window "
              f"{args.exact_window} + 4 sinks, the first {len(problems)} problems of {args.exact_data}")
        exactness(real, prompts, args.limit, tokenizer.stop_tokens)
        del real
    with_attention("auto")
    free_memory()
    done_in(t0)

# -- sampling alone ----------------------------------------------------------------------------------------------
if "sampling" not in skip:
    t0 = section("Sampling one token per row", 5)
    vocab = SMOLLM2["vocab_size"]
    logits = torch.randn(args.batch, vocab, device=device) * 3
    g = torch.Generator(device).manual_seed(0)
    print(f"batch {args.batch} x vocabulary {vocab}, float32 logits, eager, ms per call")
    print("| sampling | top_p | original ms | new ms | original / new |")
    print("|---|---|---|---|---|")
    for top_p in (None, 0.9):
        old = timed(lambda: original_sample_next(logits, 1.0, None, top_p, g), 10) * 1e3
        new = timed(lambda: sample_next(logits, 1.0, None, top_p, g), 10) * 1e3
        print(f"| temperature 1 | {top_p or '-'} | {old:.3f} | {new:.3f} | {old / new:.2f}x |")
    del logits
    free_memory()
    done_in(t0)


# -- sliding window against full attention -----------------------------------------------------------------------
def fits(model, batch, cache_len):
    """Does a batch fit? Estimated first (the cache, the logits and sampling's temporaries, with a margin, against free
    memory), then tried: a decoder and a few eager steps, catching out-of-memory. Eager and with SDPA, so that no
    attention kernel is compiled for batches that are not kept; a graph's memory is a step's, as eagerly."""
    c = model.config
    if cuda:
        element = model.embed_tokens.weight.element_size()
        slots = sum(min(cache_len, c.window + c.sinks) if c.layer_window(i) else cache_len for i in range(c.n_layers))
        need = batch * (slots * c.n_kv_heads * c.head_dim * 2 * element + c.vocab_size * 4 * 6)
        if 1.1 * need > torch.cuda.mem_get_info()[0]:
            return False
    impl = model_module.DECODE_ATTENTION
    with_attention("sdpa")
    try:
        dec = new_decoder(model, batch, cache_len, graph=False)
        for _ in range(2):
            decoder_step(dec)
        sync()
        ok = True
    except torch.cuda.OutOfMemoryError:
        ok = False  # the tensors are freed once the exception (and its traceback) is gone, below
    dec = None
    with_attention(impl)
    free_memory()
    return ok


def largest_batch(model, cache_len, max_batch):
    batch, best = max(1, max_batch // 64), None
    while batch <= max_batch and fits(model, batch, cache_len):
        best, batch = batch, batch * 2
    return best


def completion_rate(model, batch, length, bandwidth):
    """(tokens/s over a `length`-token completion, step ms at start / middle / end, floor ms at the middle)."""
    cache_len = args.prompt_len + length
    dec = new_decoder(model, batch, cache_len)
    last = cache_len - args.steps - 8
    points = [args.prompt_len, (args.prompt_len + last) // 2, last]
    ms = [step_ms(dec, p) for p in points]
    floor = floor_ms(model, batch, points[1], dec.cache, bandwidth)
    del dec
    free_memory()
    mean = (ms[0] + 2 * ms[1] + ms[2]) / 4
    return batch / mean * 1e3, ms, floor


def swa_vs_full(title, config_kw, window, lengths, max_batch, estimate_s):
    t0 = section(title, estimate_s)
    print("| completion tokens | attention | batch | ms/step start / middle / end | floor ms (middle) | tokens/s "
          "| window / this |")
    print("|---|---|---|---|---|---|---|")
    arms = (("window", window, "flex"), ("full, every slot (static)", None, "sdpa"),
            ("full, filled prefix", None, "flex"))
    model = build(config_kw, window)
    for length in lengths:
        rates = {}
        for label, w, impl in arms:
            with_attention(impl)
            model.set_window(w)
            batch = largest_batch(model, args.prompt_len + length, max_batch)
            if batch is None:
                print(f"| {length} | {label} | OOM | - | - | - | - |", flush=True)
                continue
            rate, ms, floor = completion_rate(model, batch, length, bandwidth)
            rates[label] = rate
            att = f"window {window}" if w else label
            ratio = f"{rates['window'] / rate:.2f}x" if "window" in rates and w is None else ""
            print(f"| {length} | {att} | {batch} | {' / '.join(f'{m:.2f}' for m in ms)} | {floor:.2f} | {rate:,.0f} "
                  f"| {ratio} |", flush=True)
    del model
    free_memory()
    with_attention("auto")
    done_in(t0)


if "fair" not in skip:
    swa_vs_full(f"Window {args.window} vs full attention, SmolLM2-135M shape (batch: largest up to {args.max_batch} "
                f"that fits)", SMOLLM2, args.window, [int(x) for x in args.lengths.split(",")], args.max_batch, 130)
if "qwen" not in skip:
    swa_vs_full(f"Window {args.qwen_window} vs full attention, Qwen2.5-1.5B shape (batch: largest up to "
                f"{args.qwen_max_batch} that fits)", QWEN, args.qwen_window,
                [int(x) for x in args.qwen_lengths.split(",")], args.qwen_max_batch, 110)


# -- continuous batching -----------------------------------------------------------------------------------------
class ForcedLength(Transformer):
    """The model, but each row stops exactly at the length its prompt's last token names (see the docstring)."""

    def forward(self, idx, doc_ids=None, cache=None, targets=None, loss_fn=None, last_only=False):
        logits = super().forward(idx, doc_ids=doc_ids, cache=cache, targets=targets, loss_fn=loss_fn,
                                 last_only=last_only)
        if cache is None or idx.shape[1] != 1:
            return logits
        position = cache.seen - (doc_ids[:, 0] >= 0).long()  # of the token fed in this step
        if not hasattr(cache, "target"):
            cache.target = torch.zeros_like(cache.seen)
        cache.target.copy_(torch.where(position == args.rl_prompt_len - 1, idx[:, 0], cache.target))
        nth = position - args.rl_prompt_len + 2  # the token sampled from these logits is the row's nth
        logits[:, -1, STOP] = torch.where(nth >= cache.target, 1e4, -1e4).to(logits.dtype)
        return logits


def rl_lengths(n, limit, seed=0):
    """n completion lengths like the GSM8K RL runs' (see the docstring); their mean and truncated fraction."""
    rows = [json.loads(line) for path in glob.glob(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
        __file__))), "results", "smollm2-gsm8k", "*-rl", "metrics.jsonl")) for line in open(path)]
    mean = sum(r["completion_len_mean"] for r in rows) / len(rows) if rows else 112.0
    truncated = sum(r["truncated"] for r in rows) / len(rows) if rows else 0.04
    scale = limit / 384  # --smoke shrinks the limit
    mean *= scale
    rest_mean = (mean - truncated * limit) / (1 - truncated)
    rng = random.Random(seed)
    lengths = []
    for _ in range(n):
        if rng.random() < truncated:
            lengths.append(limit)
            continue
        length = limit
        while length >= limit:
            length = max(1, round(rng.gammavariate(2.0, rest_mean / 2)))
        lengths.append(length)
    return lengths, mean, truncated


if "continuous" not in skip:
    t0 = section(f"Continuous batching vs plain batches: {args.rollouts} completions, {args.slots} rows, window "
                 f"{args.window}, SmolLM2-135M shape", 40)
    config = Config(**SMOLLM2, window=args.window)
    STOP = config.vocab_size - 1
    torch.manual_seed(0)
    model = ForcedLength(config).init_weights(0).to(device=device, dtype=dtype).eval()
    lengths, mean, truncated = rl_lengths(args.rollouts, args.limit)
    body = random_prompts(args.rollouts, args.rl_prompt_len - 1, STOP, seed=3)
    prompts = [p + [length] for p, length in zip(body, lengths)]
    print(f"prompts of {args.rl_prompt_len} tokens; completion lengths: mean {sum(lengths) / len(lengths):.1f} "
          f"(runs: {mean:.1f}), {sum(x == args.limit for x in lengths) / len(lengths):.1%} at the limit "
          f"{args.limit} (runs: {truncated:.1%}), max {max(lengths)}")

    def plain(prompts):
        out = []
        for s in range(0, len(prompts), args.slots):
            g = torch.Generator(device).manual_seed(s)
            out += generate(model, prompts[s:s + args.slots], args.limit, temperature=1.0, stop_tokens=[STOP],
                            generator=g)[0]
        return out

    def continuous(prompts):
        g = torch.Generator(device).manual_seed(0)
        return generate_continuous(model, prompts, args.limit, args.slots, temperature=1.0, stop_tokens=[STOP],
                                   generator=g)[0]

    print("| generation | seconds | tokens/s | speed-up |")
    print("|---|---|---|---|")
    results = {}
    for label, run in (("plain batches (generate)", plain), ("continuous (generate_continuous)", continuous)):
        run(prompts[:args.slots])  # compiles the attention kernel for this shape and warms up
        sync()
        t = time.perf_counter()
        out = run(prompts)
        sync()
        results[label] = time.perf_counter() - t
        assert [len(x) for x in out] == lengths, "rows must stop at their drawn lengths"
    base = results["plain batches (generate)"]
    for label, seconds in results.items():
        print(f"| {label} | {seconds:.2f} | {sum(lengths) / seconds:,.0f} | {base / seconds:.2f}x |")
    print(f"plain batches run {sum(max(lengths[s:s + args.slots]) for s in range(0, len(lengths), args.slots))} "
          f"steps; continuous batching needs at least {-(-sum(lengths) // args.slots)}")
    del model
    free_memory()
    done_in(t0)

# -- the same weights in Hugging Face transformers ---------------------------------------------------------------
if not args.hf:
    sys.exit(0)
try:
    import transformers
except ImportError:
    print("\nHugging Face comparison skipped (transformers is not installed)")
    sys.exit(0)
t0 = section("Whole completions against Hugging Face transformers", 120)
model = build(SMOLLM2, None)
config = model.config
hf_config = transformers.LlamaConfig(
    vocab_size=config.vocab_size, hidden_size=config.dim, intermediate_size=config.hidden_dim,
    num_hidden_layers=config.n_layers, num_attention_heads=config.n_heads, num_key_value_heads=config.n_kv_heads,
    head_dim=config.head_dim, rms_norm_eps=config.norm_eps, rope_theta=config.rope_theta,
    max_position_embeddings=args.prompt_len + args.hf_length, tie_word_embeddings=True,
    bos_token_id=None, eos_token_id=None, pad_token_id=0)
hf_config._attn_implementation = "sdpa"
hf = transformers.LlamaForCausalLM(hf_config)
missing, unexpected = hf.load_state_dict({"model." + k: v for k, v in model.state_dict().items()}, strict=False)
assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
hf.tie_weights()
hf = hf.to(device=device, dtype=dtype).eval()

B, L = args.hf_batch, args.hf_length
prompts = torch.randint(0, config.vocab_size, (B, args.prompt_len), generator=torch.Generator().manual_seed(1))
with torch.no_grad():  # same weights, same function: the logits must agree
    diff = (model(prompts[:2].to(device)) - hf(prompts[:2].to(device)).logits.float()).abs().max().item()
print(f"same weights in transformers {transformers.__version__} LlamaForCausalLM: max |logit diff| {diff:.3g}")
assert diff < (0.5 if cuda else 1e-3), diff


def time_hf(n):
    sync()
    t = time.perf_counter()
    with torch.no_grad():
        out = hf.generate(prompts.to(device), attention_mask=torch.ones_like(prompts).to(device), do_sample=True,
                          temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=n, min_new_tokens=n,
                          eos_token_id=None, pad_token_id=0)
    sync()
    assert out.shape[1] == args.prompt_len + n
    return time.perf_counter() - t


def time_ours(n, window):
    model.set_window(window)
    g = torch.Generator(device).manual_seed(0)
    sync()
    t = time.perf_counter()
    generate(model, prompts.tolist(), n, temperature=1.0, generator=g)
    sync()
    return time.perf_counter() - t


time_hf(4)  # warm-up
hf_s = time_hf(L)
results = [("transformers LlamaForCausalLM.generate", "full", hf_s)]
for window in (None, args.window):
    time_ours(8, window)  # warm-up (compiles the attention kernel for this shape)
    results.append(("this project, model.generate", f"window {window}" if window else "full", time_ours(L, window)))
print(f"batch {B}, {L} new tokens, sampling, no stop tokens")
print("| implementation | attention | seconds | tokens/s | vs transformers |")
print("|---|---|---|---|---|")
for impl, att, s in results:
    print(f"| {impl} | {att} | {s:.2f} | {B * L / s:,.0f} | {hf_s / s:.2f}x |")
done_in(t0)
