"""
Supervised fine-tuning on math reasoning traces, under sliding-window or full attention.

The same command fine-tunes with a sliding window (SWA) or with full attention (SA): --window overrides the
window stored in the starting checkpoint, so both runs start from the same weights.

    python sft.py --window 512                                  # ckpt/smollm2-sa -> ckpt/sft-swa512, GSM8K train
    python sft.py --window none                                 # full attention -> ckpt/sft-sa
    python sft.py --window 512 --sinks 4 --compile              # with 4 attention sinks, compiled blocks
    python sft.py --window 512 --resume                         # continue ckpt/sft-swa512 where it stopped
    python sft.py --data my_chats.jsonl --out ckpt/sft-chat     # {"messages": [{"role", "content"}, ...]} lines
    torchrun --standalone --nproc_per_node=8 sft.py --window 512    # several GPUs, data sharded by rank

Starting checkpoint (made once):
    python convert.py --src smollm2-135m-instruct --out ckpt/smollm2-sa --window none
Data:
    python -m data.prepare                                      # writes data/gsm8k/train.jsonl

Each GSM8K problem becomes a two-turn chat: the user asks the question with the same instruction that
evaluate.py uses, the assistant answers with the reference solution ending in "#### <answer>". The loss covers
only the assistant's tokens and its end-of-turn token.

Output: --out is a checkpoint directory (rewritten every --save-every steps and at the end) that also holds
    metrics.jsonl        one line per step (loss, lr, tokens/s, MFU) and per evaluation (held-out loss, accuracy)
    trainer_state.pt     optimizer, step, RNG: what --resume needs to continue exactly
"""
import argparse
import functools
import math
import os
import random
import time
from contextlib import nullcontext

import torch
import torch.distributed as dist
from tqdm import tqdm

from common import (METRICS_FILE, STATE_FILE, MetricsLog, add_window_args, apply_window, chat, check_window_args,
                    close_distributed, evaluate_task, fail, init_distributed, load_state, print0, read_jsonl, run_main,
                    save_run)
from model import head_loss, load_checkpoint, recover_checkpoint

DEFAULT_CKPT = "ckpt/smollm2-sa"
DEFAULT_DATA = "data/gsm8k/train.jsonl"


# ----------------------------------------------------------------------------------------------------------
# Data: JSONL rows -> (token ids, loss mask) -> packed rows

ROW_OPTIONAL = {"id": (str, int), "question": str, "instruction": str, "answer": (str, int, float, type(None))}


def to_messages(row):
    """A GSM8K-style row {question, solution[, answer]} or a chat row {messages: [...]} -> chat messages."""
    if "messages" in row:
        messages = row["messages"]
        ok = isinstance(messages, list) and messages and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages)
        if not ok:
            fail("\"messages\" must be a non-empty list of {\"role\": str, \"content\": str}")
        return messages
    for name in ("question", "solution"):
        if not isinstance(row.get(name), str):
            fail(f"expected string fields \"question\" and \"solution\", or a \"messages\" list; "
                 f"{name!r} is {'missing' if name not in row else type(row[name]).__name__}")
    solution = row["solution"].rstrip()
    if "####" not in solution and row.get("answer") is not None:
        solution += f"\n#### {row['answer']}"  # always end on the answer line evaluate.py extracts first
    return chat(row) + [{"role": "assistant", "content": solution}]


def load_rows(path):
    """Training rows, each checked (common.read_jsonl: a bad row is one UserError naming the file and line)."""
    if not os.path.isfile(path):
        hint = "; make it with: python -m data.prepare" if path == DEFAULT_DATA else ""
        fail(f"data file {path} not found{hint}")
    rows = read_jsonl(path, optional=ROW_OPTIONAL, check=to_messages)
    if not rows:
        fail(f"data file {path} has no examples")
    return rows


def tokenize(rows, tokenizer, seq_len):
    """Rows -> list of (ids, mask). Examples longer than a row are dropped: cutting them would cut the answer."""
    examples, too_long = [], 0
    for row in rows:
        ids, mask = tokenizer.encode_chat(to_messages(row))
        if len(ids) > seq_len:
            too_long += 1
        elif any(mask[1:]):
            examples.append((ids, mask))
    return examples, too_long


def pack(examples, seq_len):
    """Pack examples, in the given order, into rows of seq_len tokens.

    Returns LongTensors (rows, seq_len): idx, targets (-1 where no loss), doc_ids (-1 on padding). Each
    example is its own document: the model restarts positions and keeps attention inside it, so a packed row
    computes exactly what the examples would compute alone. The target of position t is token t + 1 of the
    same example, kept only when the mask marks that token as the assistant's.

    Why packing rather than length bucketing: every row is full (GSM8K traces are a few hundred tokens, so a
    4k row holds a dozen and only the tail of a row is padding), every step has the same shape (no recompiles,
    steady memory), and the GPU never multiplies padding. Bucketing would still pad each example to its
    bucket's length and make step shapes vary.
    """
    rows, row, used = [], [], 0
    for ids, mask in examples:
        if used + len(ids) > seq_len:
            rows.append(row)
            row, used = [], 0
        row.append((ids, mask))
        used += len(ids)
    if row:
        rows.append(row)
    idx = torch.zeros(len(rows), seq_len, dtype=torch.long)
    targets = torch.full((len(rows), seq_len), -1, dtype=torch.long)
    doc_ids = torch.full((len(rows), seq_len), -1, dtype=torch.long)
    for r, row in enumerate(rows):
        t = 0
        for d, (ids, mask) in enumerate(row):
            n = len(ids)
            idx[r, t:t + n] = torch.tensor(ids)
            doc_ids[r, t:t + n] = d
            nxt = torch.tensor(ids[1:])
            targets[r, t:t + n - 1] = torch.where(torch.tensor(mask[1:]), nxt, -1)
            t += n
    return idx, targets, doc_ids


def step_batches(examples, seq_len, rows_per_step, seed, epoch):
    """One epoch: shuffle (seeded by epoch, so a resumed run sees the same order), pack, cut into steps."""
    order = list(examples)
    random.Random(seed * 1000 + epoch).shuffle(order)
    idx, targets, doc_ids = pack(order, seq_len)
    for s in range(len(idx) // rows_per_step):  # the few rows left over are seen in other epochs' packings
        sl = slice(s * rows_per_step, (s + 1) * rows_per_step)
        yield idx[sl], targets[sl], doc_ids[sl]


# ----------------------------------------------------------------------------------------------------------
# The training step (bench/sft.py times exactly this)

def micro_batches(idx, targets, doc_ids, rank, world, batch_size):
    """This rank's share of one step's rows, as micro-batches. doc_ids becomes None when every row is one
    unpadded document, which lets full attention take the flash kernel."""
    idx, targets, doc_ids = idx[rank::world], targets[rank::world], doc_ids[rank::world]
    out = []
    for i in range(0, len(idx), batch_size):
        d = doc_ids[i:i + batch_size]
        out.append((idx[i:i + batch_size], targets[i:i + batch_size], None if (d == 0).all() else d))
    return out


def compiled_head_loss():
    # dynamic=False as for the blocks: every step has the same shape; evaluation's last batch recompiles once.
    return torch.compile(head_loss, dynamic=False)  # model.head_loss: see there what compiling it saves


def loss_sum(model, idx, targets, doc_ids, loss_fn=None):
    """Summed cross-entropy over targets >= 0; loss_fn: None (model.head_loss, eager) or compiled_head_loss()."""
    return model(idx, doc_ids=doc_ids, targets=targets, loss_fn=loss_fn)


def train_step(model, optimizer, batches, n_targets, lr, grad_clip, device, world=1, loss_fn=None):
    """One optimizer step over this rank's micro-batches; returns (loss, grad norm) as tensors on the device.

    The loss is the mean over every target token of the whole step (all micro-batches, all ranks), so packing,
    accumulation and the number of GPUs change nothing: each micro-batch adds sum / n_targets, times `world`
    because DistributedDataParallel averages gradients over ranks. loss_fn: see loss_sum.
    """
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    total = torch.zeros((), device=device)
    for i, (idx, targets, doc_ids) in enumerate(batches):
        idx, targets = idx.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        doc_ids = None if doc_ids is None else doc_ids.to(device, non_blocking=True)
        # Only the last micro-batch all-reduces gradients; the others accumulate locally.
        sync = nullcontext() if i == len(batches) - 1 or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with autocast:
                loss = loss_sum(model, idx, targets, doc_ids, loss_fn) / n_targets
            (loss * world).backward()
        total += loss.detach()
    for group in optimizer.param_groups:
        group["lr"] = lr
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else float("inf"))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total, norm


def lr_at(step, total_steps, args):
    """Linear warmup, then cosine or linear decay to final_lr_frac * lr. `step` counts from 0."""
    if step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    progress = (step - args.warmup_steps) / max(1, total_steps - args.warmup_steps)
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if args.schedule == "cosine" else 1 - progress
    return args.lr * (args.final_lr_frac + (1 - args.final_lr_frac) * shape)


@torch.no_grad()
def held_out_loss(model, val, rank, world, batch_size, device, loss_fn=None):
    """Mean loss per target token over the validation rows, summed across ranks."""
    idx, targets, doc_ids = val
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    total = torch.zeros(2, device=device)
    for i_, t_, d_ in micro_batches(idx, targets, doc_ids, rank, world, batch_size):
        with autocast:
            total[0] += loss_sum(model, i_.to(device), t_.to(device), None if d_ is None else d_.to(device),
                                 loss_fn)
        total[1] += (t_ >= 0).sum()
    if world > 1:
        dist.all_reduce(total)
    return (total[0] / total[1]).item()


# ----------------------------------------------------------------------------------------------------------

def check_args(args):
    """Refuse flags that would run something other than what they say, each with one line."""
    for name in ("seq_len", "batch_size", "grad_accum", "eval_max_new_tokens"):
        if getattr(args, name) < 1:
            fail(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("val_size", "warmup_steps", "eval_every", "eval_limit", "save_every"):
        if getattr(args, name) < 0:
            fail(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if args.steps is not None and args.steps < 1:  # zero would silently mean "from --epochs"
        fail(f"--steps must be >= 1 (leave it out to train --epochs), got {args.steps}")
    if not (math.isfinite(args.epochs) and args.epochs > 0):
        fail(f"--epochs must be > 0, got {args.epochs}")
    if not (math.isfinite(args.lr) and args.lr > 0 and math.isfinite(args.peak_flops) and args.peak_flops > 0):
        fail("--lr and --peak-flops must be > 0")
    if not (0 <= args.final_lr_frac <= 1 and 0 <= args.beta2 < 1):
        fail("--final-lr-frac must be in [0, 1] and --beta2 in [0, 1)")
    if not (args.weight_decay >= 0 and args.grad_clip >= 0):
        fail("--weight-decay and --grad-clip must be >= 0")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    g = parser.add_argument_group("model and data")
    g.add_argument("--ckpt", default=DEFAULT_CKPT, help="starting checkpoint (made by convert.py)")
    g.add_argument("--out", default=None, help="output checkpoint directory (default: ckpt/sft-swa<W> or ckpt/sft-sa)")
    g.add_argument("--resume", action="store_true",
                   help="continue from --out's checkpoint: weights, optimizer, step, data order")
    add_window_args(g)
    g.add_argument("--data", default=DEFAULT_DATA, help="training JSONL: {question, solution[, answer]} or {messages} rows")
    g.add_argument("--val-data", default=None, help="validation JSONL (default: hold out --val-size examples of --data)")
    g.add_argument("--val-size", type=int, default=256, help="examples held out of --data for validation")
    g.add_argument("--seed", type=int, default=0, help="data order and held-out split")
    g = parser.add_argument_group("batches and schedule")
    g.add_argument("--seq-len", type=int, default=4096, help="tokens per packed row")
    g.add_argument("--batch-size", type=int, default=8, help="rows per forward/backward pass per GPU (memory only)")
    g.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    g.add_argument("--epochs", type=float, default=2.0, help="passes over the training data (ignored with --steps)")
    g.add_argument("--steps", type=int, default=None, help="optimizer steps (default: from --epochs)")
    g.add_argument("--lr", type=float, default=3e-5, help="peak learning rate")
    g.add_argument("--final-lr-frac", type=float, default=0.1, help="final learning rate as a fraction of --lr")
    g.add_argument("--warmup-steps", type=int, default=20, help="linear warmup steps")
    g.add_argument("--schedule", choices=("cosine", "linear"), default="cosine", help="decay after warmup")
    g.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay")
    g.add_argument("--beta2", type=float, default=0.95, help="AdamW beta2")
    g.add_argument("--grad-clip", type=float, default=1.0, help="clip the gradient norm to this (0: off)")
    g = parser.add_argument_group("bookkeeping")
    g.add_argument("--eval-every", type=int, default=50,
                   help="held-out loss and accuracy every N steps (0: only at the end)")
    g.add_argument("--eval-limit", type=int, default=32, help="held-out problems for the quick accuracy check (0: skip)")
    g.add_argument("--eval-max-new-tokens", type=int, default=384, help="generation budget of the accuracy check")
    g.add_argument("--save-every", type=int, default=200, help="checkpoint every N steps (0: only at the end)")
    g.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile each transformer block, and the output head with the loss")
    g.add_argument("--grad-checkpoint", action="store_true", help="recompute activations in backward (less memory)")
    g.add_argument("--peak-flops", type=float, default=989e12,
                   help="peak bf16 FLOP/s of one GPU, for MFU (H100/H200 dense: 989e12)")
    args = parser.parse_args(argv)
    check_window_args(args)
    check_args(args)
    return args


def start(args):
    """(model, tokenizer, out, parent, state): the model to train under the requested window, the directory it
    goes to, its parent checkpoint, and with --resume the trainer state to continue from (the weights then come
    from --out). Refuses to overwrite a checkpoint without --resume."""
    if not os.path.isdir(args.ckpt) and not (args.resume and args.out):
        fail(f"checkpoint {args.ckpt} not found; make it with: "
             f"python convert.py --src smollm2-135m-instruct --out {args.ckpt} --window none")
    out = args.out
    if out is None:  # named after the window: the starting checkpoint's, unless --window overrides it
        model, tokenizer, meta = load_checkpoint(args.ckpt, device="cpu")
        apply_window(model, args)
        W, sinks = model.config.window, model.config.sinks
        out = "ckpt/sft-sa" if W is None else f"ckpt/sft-swa{W}" + (f"-sink{sinks}" if sinks else "")
    recover_checkpoint(out)  # a save cut between its two renames leaves the newest copy beside out
    state_path = os.path.join(out, STATE_FILE)
    if not args.resume:
        if os.path.isfile(os.path.join(out, "meta.json")):
            fail(f"{out} already holds a checkpoint; pass --resume to continue it or choose another --out")
        if args.out is not None:
            model, tokenizer, meta = load_checkpoint(args.ckpt, device="cpu")
            apply_window(model, args)
        return model, tokenizer, out, os.path.abspath(args.ckpt), None
    if not os.path.isfile(state_path):
        fail(f"nothing to resume: {out} has no {STATE_FILE} (run without --resume to start)")
    model, tokenizer, meta = load_checkpoint(out, device="cpu")
    apply_window(model, args)
    if meta.get("stage") != "sft":
        fail(f"{out} is a {meta.get('stage')!r} checkpoint, not an sft one")
    state = load_state(state_path)
    if not (isinstance(state, dict) and {"optimizer", "step", "history", "rng"} <= set(state)
            and isinstance(state["step"], int)):
        fail(f"{state_path} is not a trainer state of sft.py")
    return model, tokenizer, out, meta.get("parent", os.path.abspath(args.ckpt)), state


def make_optimizer(model, args, device):
    """Fused AdamW on the GPU. No weight decay on norms (1-D) is the usual choice; with wd=0 it is moot."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": args.weight_decay},
                              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                             lr=args.lr, betas=(0.9, args.beta2), fused=device.type == "cuda")


def restore(state, optimizer, device, path):
    """Optimizer and RNGs as they were at the checkpoint; returns (step, history)."""
    try:
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])
        if device.type == "cuda" and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:  # another run's state, or not sft.py's
        fail(f"{path} does not fit this run ({type(e).__name__}: {e})")
    return state["step"], list(state["history"])


def main(argv=None):
    args = parse_args(argv)
    rank, world, device = init_distributed(args.device)
    ddp, master = world > 1, rank == 0
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    model, tokenizer, out, parent, state = start(args)
    model.to(device)
    model.train()
    model.gradient_checkpointing = args.grad_checkpoint

    # Data: tokenize once, hold out a validation split, then pack every epoch in a fresh order.
    rows = load_rows(args.data)
    random.Random(args.seed).shuffle(rows)
    if args.val_data:
        val_rows, train_rows = load_rows(args.val_data), rows
    else:
        n_val = min(args.val_size, len(rows) // 10)
        val_rows, train_rows = rows[:n_val], rows[n_val:]
    train, dropped = tokenize(train_rows, tokenizer, args.seq_len)
    val_examples, _ = tokenize(val_rows, tokenizer, args.seq_len)
    val = pack(val_examples, args.seq_len) if val_examples else None
    rows_per_step = args.batch_size * args.grad_accum * world
    steps_per_epoch = sum(1 for _ in step_batches(train, args.seq_len, rows_per_step, args.seed, 0))
    if steps_per_epoch == 0:
        fail(f"{len(train)} training examples fill fewer than the {rows_per_step} rows of one step; "
             "lower --batch-size, --grad-accum or --seq-len")
    total_steps = args.steps or max(1, round(args.epochs * steps_per_epoch))
    if state is not None and state["step"] >= total_steps:
        # Resuming a finished run: its last evaluation and save are done, and would be repeated.
        print0(f"nothing to do: {out} is already at step {state['step']} of {total_steps}")
        close_distributed()
        return
    # Quick accuracy check on held-out problems that carry a reference answer.
    problems = [{**r, "id": r.get("id", str(i)), "answer": str(r["answer"])} for i, r in enumerate(val_rows)
                if "question" in r and r.get("answer") is not None][:args.eval_limit]
    print0(f"{args.ckpt} -> {out}: {model.num_params():,} parameters, window {model.config.window}, sinks "
           f"{model.config.sinks}, device {device}, {world} process(es)")
    print0(f"data: {len(train)} train examples ({sum(len(ids) for ids, _ in train):,} tokens, {dropped} longer than "
           f"--seq-len dropped), {len(val_examples)} held out; {steps_per_epoch} steps/epoch of {rows_per_step} x "
           f"{args.seq_len} tokens; {total_steps} steps")

    optimizer = make_optimizer(model, args, device)
    step, history = 0, []
    if state is not None:
        step, history = restore(state, optimizer, device, os.path.join(out, STATE_FILE))
        print0(f"resumed {out} at step {step}")
    else:
        torch.manual_seed(args.seed)
    raw_model = model
    loss_fn = None  # the model's own output head and loss
    if args.compile:
        model.compile_blocks()
        loss_fn = compiled_head_loss()  # the output head and loss too: the float32 logits stay inside one kernel
    if ddp:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    # FLOPs of a document depend on its own length (attention stays inside it): count those, not seq_len's.
    flops_per_token = functools.lru_cache(maxsize=None)(raw_model.flops_per_token)
    # Lines written after the checkpoint we resume from (a crash between saves) are replaced, not repeated.
    metrics = MetricsLog(os.path.join(out, METRICS_FILE), history, write=master)

    def evaluate_now():
        row = {"step": step}
        if val is not None:
            raw_model.eval()
            row["val_loss"] = held_out_loss(raw_model, val, rank, world, args.batch_size, device, loss_fn)
            raw_model.train()
        if master and problems:
            # Generation runs eagerly and in float32: compiled blocks would recompile for every cache shape.
            with torch.compiler.set_stance("force_eager"):
                result = evaluate_task(raw_model, tokenizer, problems, max_new_tokens=args.eval_max_new_tokens,
                                       progress=False)
            row.update({f"eval_{k}": v for k, v in result.items()
                        if k in ("accuracy", "mean_completion_tokens", "truncated")})
        if ddp:
            dist.barrier()  # the other ranks wait while rank 0 generates
        metrics.log(row)
        if master:  # through tqdm, so the progress bar stays on its own line
            tqdm.write(f"step {step}: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                                   for k, v in row.items() if k != "step"))

    def save():
        if master:
            meta = {"stage": "sft", "parent": parent, "args": vars(args), "step": step,
                    "metrics": {k: v for r in metrics.history for k, v in r.items() if k != "step"}}
            rng = {"torch": torch.get_rng_state(), "python": random.getstate(),
                   "cuda": torch.cuda.get_rng_state() if device.type == "cuda" else None}
            save_run(out, raw_model, tokenizer, meta, {"optimizer": optimizer.state_dict(), "step": step,
                                                        "history": metrics.history, "rng": rng}, metrics.history)
        if ddp:
            dist.barrier()

    # Training loop. The data order is a pure function of (seed, epoch): a resumed run skips the steps it did.
    def all_steps():
        epoch = 0
        while True:
            yield from step_batches(train, args.seq_len, rows_per_step, args.seed, epoch)
            epoch += 1

    batches = all_steps()
    for _ in range(step):
        next(batches)
    bar = tqdm(total=total_steps, initial=step, desc="sft", disable=not master, dynamic_ncols=True)
    while step < total_steps:
        idx, targets, doc_ids = next(batches)
        n_targets = int((targets >= 0).sum())  # over the whole step, every rank: each rank packs the same rows
        t0 = time.time()
        loss, norm = train_step(model, optimizer, micro_batches(idx, targets, doc_ids, rank, world, args.batch_size),
                                n_targets, lr_at(step, total_steps, args), args.grad_clip, device, world, loss_fn)
        if ddp:
            dist.all_reduce(loss)
        loss = loss.item()  # waits for the GPU, so the timing below is real
        dt = time.time() - t0
        step += 1
        # Throughput counts real tokens (padding excluded) and the FLOPs the model actually needs for them.
        lengths = [n for row in doc_ids
                   for n in torch.unique_consecutive(row[row >= 0], return_counts=True)[1].tolist()]
        tokens_per_s = sum(lengths) / dt
        mfu = sum(n * flops_per_token(n) for n in lengths) / dt / (args.peak_flops * world)
        metrics.log({"step": step, "loss": loss, "lr": lr_at(step - 1, total_steps, args), "grad_norm": norm.item(),
                     "tokens_per_s": tokens_per_s, "mfu": mfu})
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens_per_s:,.0f}", mfu=f"{100 * mfu:.1f}%")
        if args.eval_every and step % args.eval_every == 0 and step < total_steps:
            evaluate_now()
        if args.save_every and step % args.save_every == 0 and step < total_steps:
            save()
    bar.close()
    evaluate_now()
    save()
    print0(f"saved {out} (step {step})")
    if ddp:
        del model  # DistributedDataParallel holds the process group too
    close_distributed()


if __name__ == "__main__":
    run_main(main)
