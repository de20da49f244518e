"""
Training throughput of sft.py's step: tokens/s and MFU, sliding window vs full attention, long sequences.

A SmolLM2-360M-sized model with random weights (Llama: dim 960, 32 layers, 15 heads, 5 key/value heads,
SwiGLU 2560, vocabulary 49152, tied embeddings), bf16 autocast, fused AdamW, one document per row (or packed
ones: --doc-len), timed through sft.train_step itself. Prints a table with the GPU name and the SWA / full tokens/s ratio per length.

    python bench/sft.py                          # one GPU: sequences 4k and 16k, window 512 vs full (~2 min on an H100)
    python bench/sft.py --compile                # torch.compile each block and the head + loss, as `sft.py --compile` does
    python bench/sft.py --compile --loss both --seq-lens 4096   # A/B: eager head + loss vs compiled, same run
    python bench/sft.py --seq-lens 4096,16384,32768 --batch-tokens 65536 --grad-checkpoint
    python bench/sft.py --seq-lens 2048 --doc-len 300   # packed short examples, as GSM8K SFT runs
    python bench/sft.py --smoke                  # tiny sizes on the CPU: checks the script end to end

--loss picks the output head + loss: "plain" is the model's eager path (float32 logits, F.cross_entropy),
"compiled" is model.head_loss under torch.compile (what `sft.py --compile` uses); the default follows --compile.

MFU counts the FLOPs each configuration really needs (model.flops_per_token: 6 per weight plus the attention
scores inside the window), against --peak-flops (H100/H200 dense bf16: 989e12). A micro-batch that does not
fit is halved until it does; the batch column says what ran.
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from model import Config, Transformer  # noqa: E402
from sft import compiled_head_loss, micro_batches, train_step  # noqa: E402

parser = argparse.ArgumentParser(description="tokens/s and MFU of the SFT training step, SWA vs full attention")
parser.add_argument("--seq-lens", default="4096,16384", help="comma-separated sequence lengths")
parser.add_argument("--window", type=int, default=512, help="sliding window compared against full attention")
parser.add_argument("--sinks", type=int, default=0, help="attention sink tokens of the sliding-window runs")
parser.add_argument("--batch-tokens", type=int, default=32768,
                    help="tokens per step (rows = batch_tokens // seq_len, at least 1)")
parser.add_argument("--warmup", type=int, default=3, help="untimed steps per configuration (compilation, autotuning)")
parser.add_argument("--steps", type=int, default=10, help="timed steps per configuration")
parser.add_argument("--compile", action="store_true", help="torch.compile each transformer block")
parser.add_argument("--loss", choices=("plain", "compiled", "both"), default=None,
                    help="output head + loss: eager, compiled, or both in turn (default: compiled with --compile)")
parser.add_argument("--doc-len", type=int, default=0,
                    help="pack documents of this many tokens into each row, as sft.py packs examples (0: one per row)")
parser.add_argument("--grad-checkpoint", action="store_true", help="recompute activations in backward")
parser.add_argument("--peak-flops", type=float, default=989e12, help="peak bf16 FLOP/s of the GPU, for MFU")
parser.add_argument("--smoke", action="store_true", help="tiny model and sequences on the CPU")
args = parser.parse_args()
if args.loss is None:
    args.loss = "compiled" if args.compile else "plain"
loss_modes = ["plain", "compiled"] if args.loss == "both" else [args.loss]

if args.smoke:
    device = torch.device("cpu")
    config = Config(vocab_size=512, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=128)
    seq_lens, window, batch_tokens, warmup, steps = [128, 512], 32, 1024, 1, 2
else:
    if not torch.cuda.is_available():
        sys.exit("error: no CUDA device; use --smoke for a CPU check")
    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True
    config = Config(vocab_size=49152, dim=960, n_layers=32, n_heads=15, n_kv_heads=5, hidden_dim=2560,
                    rope_theta=100000.0, tie_embeddings=True)
    seq_lens = [int(s) for s in args.seq_lens.split(",")]
    window, batch_tokens, warmup, steps = args.window, args.batch_tokens, args.warmup, args.steps
gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"

model = Transformer(config).init_weights(0).to(device)
model.train()
model.gradient_checkpointing = args.grad_checkpoint
if args.compile:
    model.compile_blocks()
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.95), fused=device.type == "cuda")
loss_fns = {"plain": None, "compiled": compiled_head_loss()}
print(f"{gpu}: {model.num_params():,} parameters, torch {torch.__version__}, compile {args.compile}, "
      f"{f'documents of {args.doc_len} tokens' if args.doc_len else 'one document per row'}, "
      f"head + loss {'/'.join(loss_modes)}, grad checkpoint {args.grad_checkpoint}")


def sync():
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(seq_len, rows, loss_fn):
    """Seconds per optimizer step of `rows` rows of seq_len tokens (one micro-batch), after warmup."""
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, config.vocab_size, (rows, seq_len), generator=g)
    targets = torch.randint(0, config.vocab_size, (rows, seq_len), generator=g)
    doc_ids = torch.zeros(rows, seq_len, dtype=torch.long)  # one document per row, as a long trace would be
    if args.doc_len:
        doc_ids[:] = torch.arange(seq_len) // args.doc_len
    batches = micro_batches(idx, targets, doc_ids, 0, 1, rows)
    for _ in range(warmup):
        train_step(model, optimizer, batches, targets.numel(), 1e-5, 1.0, device, loss_fn=loss_fn)
    sync()
    t0 = time.time()
    for _ in range(steps):
        train_step(model, optimizer, batches, targets.numel(), 1e-5, 1.0, device, loss_fn=loss_fn)
    sync()
    return (time.time() - t0) / steps


results = []
for seq_len in seq_lens:
    for w in (window, None):
        model.set_window(w, args.sinks if w is not None else 0)
        for mode in loss_modes:
            rows = max(1, batch_tokens // seq_len)
            while True:
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats(device)
                try:
                    dt = measure(seq_len, rows, loss_fns[mode])
                    break
                except torch.cuda.OutOfMemoryError:
                    optimizer.zero_grad(set_to_none=True)
                    if rows == 1:
                        dt = None
                        break
                    rows //= 2
            mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
            tok_s = rows * seq_len / dt if dt else None
            mfu = model.flops_per_token(seq_len) * tok_s / args.peak_flops if dt else None
            results.append((seq_len, w, mode, rows, dt, tok_s, mfu, mem))
            label = "full" if w is None else f"swa{w}"
            print(f"  seq {seq_len:>6} {label:>8} {mode:>8}: " + ("out of memory at 1 row" if dt is None else
                  f"{tok_s:,.0f} tok/s, MFU {100 * mfu:.1f}%, {mem:.1f} GiB"), flush=True)

precision = "bf16 autocast" if device.type == "cuda" else "float32"
print(f"\nSFT training step, {gpu}, {precision}{', compiled blocks' if args.compile else ''}")
print(f"| {'seq':>6} | {'attention':>9} | {'head+loss':>9} | {'rows':>4} | {'ms/step':>8} | {'tokens/s':>10} "
      f"| {'MFU':>6} | {'peak GiB':>8} |")
print(f"|{'-' * 8}|{'-' * 11}|{'-' * 11}|{'-' * 6}|{'-' * 10}|{'-' * 12}|{'-' * 8}|{'-' * 10}|")
for seq_len, w, mode, rows, dt, tok_s, mfu, mem in results:
    label = "full" if w is None else f"swa {w}"
    if dt is None:
        print(f"| {seq_len:>6} | {label:>9} | {mode:>9} | {'OOM':>4} | {'':>8} | {'':>10} | {'':>6} | {'':>8} |")
    else:
        print(f"| {seq_len:>6} | {label:>9} | {mode:>9} | {rows:>4} | {1000 * dt:>8.1f} | {tok_s:>10,.0f} "
              f"| {100 * mfu:>5.1f}% | {mem:>8.1f} |")
print()
by_key = {(r[0], r[1], r[2]): r for r in results}
for mode in loss_modes:
    for seq_len in seq_lens:
        swa, full = by_key[(seq_len, window, mode)][5], by_key[(seq_len, None, mode)][5]
        ratio = f"{swa / full:.2f}x" if swa and full else "n/a"
        print(f"seq {seq_len}, {mode} head+loss: SWA/full tokens/s = {ratio}")
if len(loss_modes) == 2:
    for seq_len in seq_lens:
        for w in (window, None):
            plain, fused = by_key[(seq_len, w, "plain")][5], by_key[(seq_len, w, "compiled")][5]
            ratio = f"{fused / plain:.3f}x" if plain and fused else "n/a"
            print(f"seq {seq_len}, {'full' if w is None else f'swa {w}'}: compiled/plain head+loss tokens/s = {ratio}")
