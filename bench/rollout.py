"""
Rollout (generation) throughput: a sliding window of 512 against full attention, for RL-length completions.

A SmolLM2-135M-sized model with random bf16 weights (Llama: dim 576, 30 layers, 9 heads, 3 key/value heads,
SwiGLU 1536, vocabulary 49152, tied embeddings) samples with no stop tokens, so every row runs to its length.
For each completion length (1k, 4k, 8k) and attention, the batch is doubled until the GPU runs out of memory
or --max-batch is reached, and the largest batch that fit is timed. Then the same weights are loaded into
Hugging Face transformers' LlamaForCausalLM (full attention, SDPA) and both `generate`s are timed on one
batch and length (skipped when transformers is not installed; it is a benchmark-only dependency).

    python bench/rollout.py                       # one GPU; a few minutes on an H100 (--max-batch bounds it)
    python bench/rollout.py --lengths 1024,4096 --max-batch 512
    python bench/rollout.py --smoke               # tiny sizes on the CPU: checks the script end to end

Timing: model.py's cache gives each layer a fixed number of slots for the whole generation (window + sinks
for sliding-window layers, prompt + completion for full layers), and a decoding step attends over all of
them, masked. So every step of an L-token completion costs the same, and the rate measured over a few dozen
steps with the cache sized for L tokens is the rate of the whole completion. Two runs of different step
counts are subtracted, which takes out the prompt prefill and fixed costs. The Hugging Face comparison
generates whole completions instead (its cache grows), ours too.
"""
import argparse
import gc
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from model import Config, Transformer, generate  # noqa: E402

parser = argparse.ArgumentParser(description="rollout tokens/s, sliding window vs full attention, vs HF generate")
parser.add_argument("--lengths", default="1024,4096,8192", help="completion lengths, comma-separated")
parser.add_argument("--window", type=int, default=512, help="sliding window compared against full attention")
parser.add_argument("--prompt-len", type=int, default=16, help="prompt tokens per row (random ids)")
parser.add_argument("--min-batch", type=int, default=8, help="first batch size of the doubling search")
parser.add_argument("--max-batch", type=int, default=1024, help="largest batch size tried")
parser.add_argument("--steps", type=int, default=32, help="timed decoding steps per measurement")
parser.add_argument("--hf-batch", type=int, default=64, help="batch of the Hugging Face comparison")
parser.add_argument("--hf-length", type=int, default=1024, help="completion length of the Hugging Face comparison")
parser.add_argument("--graph-batch", type=int, default=256, help="batch of the CUDA graph vs eager comparison")
parser.add_argument("--no-hf", action="store_true", help="skip the Hugging Face comparison")
parser.add_argument("--smoke", action="store_true", help="tiny model and sizes on the CPU")
args = parser.parse_args()

device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
cuda = device == "cuda"
dtype = torch.bfloat16 if cuda else torch.float32
if args.smoke:
    config = Config(vocab_size=512, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=128)
    args.lengths, args.window, args.min_batch, args.max_batch, args.steps = "32,64", 16, 2, 8, 16
    args.hf_batch, args.hf_length = 4, 24
else:
    config = Config(vocab_size=49152, dim=576, n_layers=30, n_heads=9, n_kv_heads=3, hidden_dim=1536,
                    rope_theta=100000.0, tie_embeddings=True)
lengths = [int(x) for x in args.lengths.split(",")]
model = Transformer(config).init_weights(0).to(device=device, dtype=dtype).eval()
name = torch.cuda.get_device_name() if cuda else "CPU"
print(f"{name}: {model.num_params() / 1e6:.1f}M parameters, {dtype}, prompt {args.prompt_len} tokens")


def sync():
    if cuda:
        torch.cuda.synchronize()


def run(batch, steps, cache_len):
    """generate `steps` tokens for `batch` rows with the cache sized for `cache_len` tokens; seconds taken."""
    g = torch.Generator(device).manual_seed(0)
    prompts = torch.randint(0, config.vocab_size, (batch, args.prompt_len), generator=torch.Generator().manual_seed(0))
    model.make_cache = lambda b, max_len: Transformer.make_cache(model, b, max(max_len, cache_len))
    sync()
    t0 = time.time()
    tokens, _ = generate(model, prompts.tolist(), steps, temperature=1.0, generator=g)
    sync()
    assert all(len(t) == steps for t in tokens)
    return time.time() - t0


def fits(batch, cache_len):
    """Does a batch fit? A few steps reach the peak: the caches are allocated whole at the start."""
    oom = False
    try:
        run(batch, 2, cache_len)
    except torch.cuda.OutOfMemoryError:
        oom = True  # the tensors are freed once the exception (and its traceback) is gone, below
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return not oom


rows = []
for length in lengths:
    for window in (args.window, None):
        model.set_window(window)
        cache_len = args.prompt_len + length
        batch, best = args.min_batch, None
        while batch <= args.max_batch and fits(batch, cache_len):
            best, batch = batch, batch * 2
        if best is None:
            rows.append((length, window, None, None, None, None))
            continue
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        run(best, 4, cache_len)  # warm-up
        short = min(run(best, 4, cache_len) for _ in range(2))  # best of two: less noise from the host
        long = min(run(best, 4 + args.steps, cache_len) for _ in range(2))
        # a noisy host can make the difference meaningless; then count the prefill in
        per_step = (long - short) / args.steps if long > short else long / (4 + args.steps)
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
        rows.append((length, window, best, best / per_step, per_step * 1e3, peak))
        print(f"  {length} tokens, window {window or 'full'}: batch {best}, {best / per_step:,.0f} tokens/s",
              flush=True)
model.set_window(None)

print(f"\nRollout throughput on {name} (sampling, no stop tokens; batch = largest of the doubling search "
      f"up to {args.max_batch} that fit)")
print("| completion tokens | attention | batch | tokens/s | ms/step | peak GiB | SWA / full |")
print("|---|---|---|---|---|---|---|")
rate = {(r[0], r[1]): r[3] for r in rows}
for length, window, batch, tps, ms, peak in rows:
    att = f"window {window}" if window else "full"
    if batch is None:
        print(f"| {length} | {att} | OOM at {args.min_batch} | - | - | - | - |")
        continue
    full = rate.get((length, None))
    ratio = f"{tps / full:.2f}x" if window and full else ""
    print(f"| {length} | {att} | {batch} | {tps:,.0f} | {ms:.1f} | {peak:.1f} | {ratio} |" if peak is not None else
          f"| {length} | {att} | {batch} | {tps:,.0f} | {ms:.1f} | - | {ratio} |")

# -- the decoding step as a CUDA graph vs launched kernel by kernel ----------------------------------------------
if cuda:
    vars(model).pop("make_cache", None)
    prompts = torch.randint(0, config.vocab_size, (args.graph_batch, args.prompt_len),
                            generator=torch.Generator().manual_seed(2)).tolist()
    print(f"\nDecoding step as one CUDA graph vs eager kernels: batch {args.graph_batch}, 256 greedy tokens")
    print("| attention | eager tokens/s | graph tokens/s | speed-up | same tokens |")
    print("|---|---|---|---|---|")
    for window in (args.window, None):
        model.set_window(window)
        out, rate = {}, {}
        for graph in (False, True):
            generate(model, prompts, 8, cuda_graph=graph)  # warm-up
            sync()
            t0 = time.time()
            out[graph], _ = generate(model, prompts, 256, cuda_graph=graph)
            sync()
            rate[graph] = sum(map(len, out[graph])) / (time.time() - t0)
        print(f"| {f'window {window}' if window else 'full'} | {rate[False]:,.0f} | {rate[True]:,.0f} | "
              f"{rate[True] / rate[False]:.2f}x | {out[False] == out[True]} |")
    model.set_window(None)

# -- the same weights in Hugging Face transformers -----------------------------------------------------------
try:
    import transformers
except ImportError:
    transformers = None
if args.no_hf or transformers is None:
    print("\nHugging Face comparison skipped" + ("" if args.no_hf else " (transformers is not installed)"))
    sys.exit(0)

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
    ours_logits = model(prompts[:2].to(device))
    hf_logits = hf(prompts[:2].to(device)).logits.float()
diff = (ours_logits - hf_logits).abs().max().item()
print(f"\nsame weights in transformers {transformers.__version__} LlamaForCausalLM: max |logit diff| {diff:.3g}")
assert diff < (0.5 if cuda else 1e-3), diff


def time_hf(n):
    sync()
    t0 = time.time()
    with torch.no_grad():
        out = hf.generate(prompts.to(device), attention_mask=torch.ones_like(prompts).to(device), do_sample=True,
                          temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=n, min_new_tokens=n,
                          eos_token_id=None, pad_token_id=0)
    sync()
    assert out.shape[1] == args.prompt_len + n
    return time.time() - t0


def time_ours(n, window):
    model.set_window(window)
    vars(model).pop("make_cache", None)  # back to the real cache, sized by generate itself
    g = torch.Generator(device).manual_seed(0)
    sync()
    t0 = time.time()
    generate(model, prompts.tolist(), n, temperature=1.0, generator=g)
    sync()
    return time.time() - t0


time_hf(4)  # warm-up
hf_s = time_hf(L)
time_ours(4, None)
results = [("transformers LlamaForCausalLM.generate", "full", hf_s)]
for window in (None, args.window):
    results.append(("this project, model.generate", f"window {window}" if window else "full", time_ours(L, window)))
print(f"\nWhole completions on {name}: batch {B}, {L} new tokens, sampling, no stop tokens")
print("| implementation | attention | seconds | tokens/s | vs transformers |")
print("|---|---|---|---|---|")
for impl, att, s in results:
    print(f"| {impl} | {att} | {s:.2f} | {B * L / s:,.0f} | {hf_s / s:.2f}x |")
