"""
On-policy reinforcement learning (GRPO / DAPO family) of a sliding-window model on math problems.

Each step the policy writes G solutions to each of a few training problems, under its own attention window
(model.generate, ring KV cache), and learns from the answer checker's verdict (data.answers.is_correct):

    reward      1 for a correct final answer, else 0; plus optional format and DAPO overlong-length terms
    advantage   reward minus the mean of its group (the G answers to one problem), optionally / group std
    loss        PPO-clipped policy gradient with separate low/high clip ranges (DAPO clip-higher), averaged over
                every completion token of the batch (DAPO), per sequence ("grpo") or by a constant ("drgrpo");
                optional k3 KL penalty to the frozen starting model
    sampling    groups whose answers all got the same reward teach nothing and are dropped and refilled
                (dynamic sampling), up to --max-gen-rounds generation rounds

The log-probabilities in the ratio come from a training forward pass under the same window and temperature;
the "old" ones from a no-grad forward of the policy before the updates. The sampler's own log-probabilities
are only compared with them (logprob_diff), a check that generation and training compute the same model.

    python -m data.prepare                                                # data/gsm8k/train.jsonl, test.jsonl
    python rl.py --ckpt ckpt/sft-swa512 --task gsm8k                      # writes ckpt/rl-gsm8k
    python rl.py --ckpt ckpt/sft-swa512 --task gsm8k --resume             # continue an interrupted run
    torchrun --standalone --nproc_per_node=8 rl.py --ckpt ckpt/sft-swa512 --task gsm8k
    python rl.py --ckpt ckpt/sft-swa512 --task gsm8k --aggregation grpo --scale-std --clip-high 0.2   # GRPO
    python rl.py --ckpt ckpt/sft-full --task synthetic --window 64 --sinks 4   # RL under another window

Output: --out (default ckpt/rl-<task>) is a checkpoint directory (rewritten every --save-every steps and at the
end, meta stage "rl") that also holds
    metrics.jsonl        one line per step: reward, accuracy, group shares, lengths, clip fraction, KL, entropy,
                         tokens/s, sampler/trainer log-prob difference, and held-out greedy accuracy when evaluated
    trainer_state.pt     optimizer, step, problem order and RNG of every rank: what --resume needs

Test: python -m pytest -q tests/test_rl.py
"""
import argparse
import copy
import json
import math
import os
import random
import sys
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from common import (DATA_DIR, EVAL_TASK, METRICS_FILE, STATE_FILE, build_prompt, close_distributed, evaluate_task,
                    load_task, parse_window, save_run)
from data.answers import find_answer, is_correct
from model import generate, load_checkpoint

AGGREGATIONS = ("token", "grpo", "drgrpo")


# ----------------------------------------------------------------------------------------------------------
# The loss math, as small pure functions so that tests can check them by hand.

def group_advantages(rewards, group_size, scale_by_std=False, eps=1e-6):
    """rewards (N * G,), grouped consecutively -> advantages (N * G,): reward minus its group's mean.
    Dividing by the group's std (GRPO) up-weights near-unanimous groups; Dr. GRPO leaves it out."""
    r = rewards.view(-1, group_size).float()
    adv = r - r.mean(dim=1, keepdim=True)
    if scale_by_std:
        adv = adv / (r.std(dim=1, keepdim=True) + eps)
    return adv.view(-1)


def informative_groups(rewards, group_size):
    """(N,) bool: groups whose rewards are not all equal. The others have zero advantage everywhere."""
    r = rewards.view(-1, group_size)
    return (r != r[:, :1]).any(dim=1)


def overlong_penalty(length, max_len, cache_len):
    """DAPO's soft length penalty: 0 up to max_len - cache_len tokens, then falling linearly to -1 at max_len.
    It tells a truncated (unfinished) answer from a merely long one without a cliff at the limit."""
    if cache_len <= 0 or length <= max_len - cache_len:
        return 0.0
    return max(-1.0, (max_len - cache_len - length) / cache_len)


def kl_k3(logprobs, ref_logprobs):
    """Per-token k3 estimator of KL(policy || reference) on tokens sampled from the policy: unbiased and >= 0."""
    d = ref_logprobs - logprobs
    return torch.exp(d) - d - 1


def loss_normaliser(mask, aggregation, max_len=None):
    """What the summed token losses are divided by, counted on this batch. In training it is summed over the
    whole minibatch (all micro-batches and ranks) so that the aggregation is global, not per piece.
        token   number of completion tokens (DAPO: long answers weigh by their length)
        grpo    number of sequences (each sequence's tokens are averaged first)
        drgrpo  number of sequences times max_len (a constant per sequence: no length bias)"""
    if aggregation == "token":
        return float(mask.sum())
    n_seq = float((mask.sum(dim=1) > 0).sum())
    if aggregation == "grpo":
        return n_seq
    if aggregation == "drgrpo":
        return n_seq * max_len
    raise ValueError(f"unknown aggregation {aggregation!r} (choose from {', '.join(AGGREGATIONS)})")


def policy_loss(logprobs, old_logprobs, advantages, mask, clip_low=0.2, clip_high=0.28, aggregation="token",
                normaliser=None, max_len=None, ref_logprobs=None, kl_beta=0.0):
    """PPO-clipped policy-gradient loss with optional k3 KL penalty.

    logprobs, old_logprobs, ref_logprobs, mask: (B, T), one entry per predicted token (mask: completion tokens
    that are trained); advantages: (B,), one per sequence. The ratio exp(logprobs - old) is clipped to
    [1 - clip_low, 1 + clip_high]; the pessimistic (min) objective means a token stops pushing once its
    probability moved past the clip range in the direction its advantage wants.
    Returns (loss, stats) with stats holding token sums: "clipped" and "kl" (for logging).
    """
    mask = mask.to(logprobs.dtype)
    ratio = torch.exp(logprobs - old_logprobs)
    adv = advantages[:, None].to(logprobs.dtype)
    unclipped = ratio * adv
    clipped = ratio.clamp(1 - clip_low, 1 + clip_high) * adv
    per_token = -torch.minimum(unclipped, clipped)
    kl = torch.zeros_like(per_token)
    if ref_logprobs is not None:
        kl = kl_k3(logprobs, ref_logprobs)
        per_token = per_token + kl_beta * kl
    if normaliser is None:
        normaliser = loss_normaliser(mask, aggregation, max_len)
    if aggregation == "grpo":
        seq_sum = (per_token * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
        loss = seq_sum.sum() / max(normaliser, 1.0)
    elif aggregation in ("token", "drgrpo"):
        loss = (per_token * mask).sum() / max(normaliser, 1.0)
    else:
        raise ValueError(f"unknown aggregation {aggregation!r} (choose from {', '.join(AGGREGATIONS)})")
    stats = {"clipped": float(((clipped < unclipped).to(mask.dtype) * mask).sum()),
             "kl": float((kl.detach() * mask).sum())}
    return loss, stats


def make_batch(prompts, completions, device):
    """Right-padded training rows of prompt + completion. Returns (inputs, doc_ids, targets, mask), all (B, T):
    position t of `inputs` predicts targets[t]; mask marks predictions of completion tokens."""
    lengths = [len(p) + len(c) for p, c in zip(prompts, completions)]
    T = max(lengths) - 1
    inputs = torch.zeros(len(prompts), T, dtype=torch.long)
    targets = torch.zeros_like(inputs)
    doc_ids = torch.full_like(inputs, -1)  # -1: padding, which no token attends
    mask = torch.zeros(len(prompts), T, dtype=torch.bool)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        row = torch.tensor(p + c, dtype=torch.long)
        n = len(row) - 1
        inputs[i, :n], targets[i, :n], doc_ids[i, :n] = row[:-1], row[1:], 0
        mask[i, len(p) - 1:n] = True
    return inputs.to(device), doc_ids.to(device), targets.to(device), mask.to(device)


def spread(values, mask):
    """Per-sequence lists of per-token values -> (B, T) tensor laid out like make_batch's mask."""
    out = torch.zeros(mask.shape, dtype=torch.float32)
    out[mask.cpu()] = torch.tensor([v for row in values for v in row], dtype=torch.float32)
    return out.to(mask.device)


def token_logprobs(model, inputs, doc_ids, targets, mask, temperature, entropy=False):
    """Log-probabilities of the targets under softmax(logits / temperature), as generate computes them,
    at the masked positions only (prompt logits are never needed). Optionally the summed entropy too."""
    logits = model(inputs, doc_ids=doc_ids)
    logp = (logits[mask] / temperature).log_softmax(-1)
    picked = logp.gather(-1, targets[mask][:, None]).squeeze(-1)
    out = torch.zeros(mask.shape, dtype=picked.dtype, device=picked.device).masked_scatter(mask, picked)
    ent = float(-(logp.detach().exp() * logp.detach()).sum()) if entropy else 0.0
    return out, ent


# ----------------------------------------------------------------------------------------------------------

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="starting checkpoint (also the KL reference)")
    parser.add_argument("--task", default="gsm8k", help="training problems: data/<task>/train.jsonl")
    parser.add_argument("--eval-task", default=None, help="held-out problems: data/<eval-task>/test.jsonl "
                        "(default: the task itself, math500 for math)")
    parser.add_argument("--data-dir", default=DATA_DIR, help="directory holding <task>/{train,test}.jsonl")
    parser.add_argument("--out", default=None, help="checkpoint directory (default ckpt/rl-<task>)")
    parser.add_argument("--resume", action="store_true", help="continue from --out: weights, optimizer, step, RNG")
    parser.add_argument("--window", default=None, help="override the attention window: an integer or 'none'")
    parser.add_argument("--sinks", type=int, default=None, help="override the number of attention sink tokens")
    # rollouts
    parser.add_argument("--steps", type=int, default=200, help="RL steps (one rollout batch each)")
    parser.add_argument("--prompts-per-step", type=int, default=32, help="problems per step, over all GPUs")
    parser.add_argument("--group-size", type=int, default=8, help="completions sampled per problem (G)")
    parser.add_argument("--max-new-tokens", type=int, default=512, help="completion length limit")
    parser.add_argument("--max-prompt-tokens", type=int, default=1024, help="longer training problems are skipped")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (> 0)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    parser.add_argument("--gen-batch", type=int, default=256, help="sequences generated together per rank")
    parser.add_argument("--dynamic-sampling", action=argparse.BooleanOptionalAction, default=True,
                        help="drop groups whose rewards are all equal and sample more problems (DAPO)")
    parser.add_argument("--max-gen-rounds", type=int, default=3, help="generation rounds per step to refill groups")
    # reward
    parser.add_argument("--format-reward", type=float, default=0.0,
                        help="added when the completion finishes and states its answer explicitly "
                             "(#### N, \\boxed{}, 'the answer is')")
    parser.add_argument("--overlong-cache", type=int, default=0,
                        help="DAPO soft overlong penalty over the last N tokens before --max-new-tokens (0 = off)")
    parser.add_argument("--mask-truncated", action="store_true",
                        help="completions that hit --max-new-tokens get no loss (they still count in group means)")
    # loss
    parser.add_argument("--scale-std", action="store_true", help="divide advantages by the group std (GRPO); "
                        "off is Dr. GRPO")
    parser.add_argument("--aggregation", default="token", choices=AGGREGATIONS,
                        help="token: mean over all completion tokens of the batch (DAPO); grpo: mean of per-sequence "
                             "means; drgrpo: token sum / (sequences * max-new-tokens)")
    parser.add_argument("--clip-low", type=float, default=0.2, help="ratio clipped below at 1 - clip-low")
    parser.add_argument("--clip-high", type=float, default=0.28, help="ratio clipped above at 1 + clip-high (DAPO)")
    parser.add_argument("--kl-beta", type=float, default=0.0, help="weight of the k3 KL penalty to the start model")
    parser.add_argument("--ppo-epochs", type=int, default=1, help="passes over each rollout batch")
    parser.add_argument("--minibatches", type=int, default=1, help="optimizer steps per pass over the batch")
    parser.add_argument("--micro-batch", type=int, default=8, help="sequences per forward/backward (memory only)")
    # optimizer
    parser.add_argument("--lr", type=float, default=1e-6, help="AdamW learning rate")
    parser.add_argument("--warmup-steps", type=int, default=10, help="linear learning-rate warmup (RL steps)")
    parser.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay")
    parser.add_argument("--grad-clip", type=float, default=1.0, help="gradient norm clip (0 = off)")
    # bookkeeping
    parser.add_argument("--eval-every", type=int, default=50, help="greedy evaluation every N steps (0 = off)")
    parser.add_argument("--eval-limit", type=int, default=64, help="held-out problems per evaluation")
    parser.add_argument("--eval-max-new-tokens", type=int, default=None, help="default: --max-new-tokens")
    parser.add_argument("--save-every", type=int, default=50, help="checkpoint every N steps (and at the end)")
    parser.add_argument("--seed", type=int, default=0, help="problem order and sampling seed")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda or cpu")
    parser.add_argument("--compile", action="store_true", help="torch.compile each transformer block (training "
                        "forwards; generation stays eager)")
    parser.add_argument("--grad-ckpt", action="store_true", help="activation checkpointing in training forwards")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    args = parser.parse_args(argv)

    # -- distributed setup: every rank generates its share of the problems; gradients are summed -----------
    ddp = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    rank, world = (int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])) if ddp else (0, 1)
    device = args.device
    if ddp:
        if device.startswith("cuda"):
            device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    master = rank == 0

    def print0(*a, **k):
        if master:
            print(*a, **k)

    def all_reduce(values, op=None):
        t = torch.tensor(values, dtype=torch.float64, device=device)
        if ddp:
            dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
        return t.tolist()

    # -- checks: one clear line for a bad command ----------------------------------------------------------
    if args.group_size < 2:
        raise SystemExit("error: --group-size must be >= 2 (advantages compare answers within a group)")
    if args.prompts_per_step < 1 or args.prompts_per_step % world:
        raise SystemExit(f"error: --prompts-per-step ({args.prompts_per_step}) must be a positive multiple "
                         f"of the number of processes ({world})")
    if args.temperature <= 0:
        raise SystemExit("error: --temperature must be > 0 (RL needs sampled, varied answers)")
    if not 0 < args.top_p <= 1:
        raise SystemExit("error: --top-p must be in (0, 1]")
    if not (0 <= args.clip_low < 1 and args.clip_high >= 0):
        raise SystemExit("error: --clip-low must be in [0, 1) and --clip-high >= 0")
    for name in ("steps", "max_new_tokens", "ppo_epochs", "minibatches", "micro_batch", "gen_batch",
                 "max_gen_rounds", "max_prompt_tokens", "save_every", "eval_limit"):
        if getattr(args, name) < 1:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be >= 1")
    if args.overlong_cache < 0 or args.overlong_cache >= args.max_new_tokens and args.overlong_cache:
        raise SystemExit("error: --overlong-cache must be in [0, --max-new-tokens)")
    if args.kl_beta < 0 or args.lr <= 0 or args.eval_every < 0:
        raise SystemExit("error: --kl-beta and --eval-every must be >= 0 and --lr > 0")
    try:  # used only when the flag is given: "none" -> None, full attention
        window = None if args.window is None else parse_window(args.window)
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    out_dir = args.out or os.path.join("ckpt", f"rl-{args.task}")
    if args.resume and not os.path.isdir(out_dir):
        raise SystemExit(f"error: --resume but {out_dir} does not exist")

    # -- data ----------------------------------------------------------------------------------------------
    train = load_task(args.data_dir, args.task, "train")
    eval_task = args.eval_task or EVAL_TASK.get(args.task, args.task)
    held_out = load_task(args.data_dir, eval_task, "test")[:args.eval_limit] if args.eval_every else []

    # -- model, reference, optimizer -----------------------------------------------------------------------
    model, tokenizer, _ = load_checkpoint(args.ckpt, device=device)  # float32 master weights
    if args.window is not None or args.sinks is not None:
        model.set_window(model.config.window if args.window is None else window, args.sinks)
    ref = None
    if args.kl_beta > 0:  # frozen copy of the starting policy
        ref = copy.deepcopy(model).eval().requires_grad_(False)
    if args.resume:
        resumed, _, resumed_meta = load_checkpoint(out_dir, device=device)
        if resumed_meta.get("stage") != "rl":
            raise SystemExit(f"error: {out_dir} is a {resumed_meta.get('stage')!r} checkpoint, not an rl one")
        model.load_state_dict(resumed.state_dict())
        del resumed
    cuda = device.startswith("cuda")
    # Rollouts come from a bf16 copy of the policy on the GPU: decoding is memory-bound, and autocast would re-cast
    # every weight at every decoding step (model.py's cache also keeps the weights' dtype). The copy is refreshed
    # after every update; logprob_diff shows what its precision costs. (RoPE frequencies stay float32: model.py
    # recomputes them after every cast.)
    sampler = model
    if cuda:
        sampler = copy.deepcopy(model).to(torch.bfloat16).eval().requires_grad_(False)
    model.gradient_checkpointing = args.grad_ckpt
    if args.compile:
        model.compile_blocks()  # generation runs eagerly (below): compiled blocks would recompile for every cache shape
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.999),
                            fused=cuda)

    prompts_all = [build_prompt(tokenizer, p) for p in train]
    keep = [i for i, p in enumerate(prompts_all) if len(p) <= args.max_prompt_tokens]
    if not keep:
        raise SystemExit(f"error: every problem of {args.task} is longer than --max-prompt-tokens")
    if len(keep) < len(train):
        print0(f"skipping {len(train) - len(keep)} problems longer than {args.max_prompt_tokens} prompt tokens")
    mine = keep[rank::world]  # each rank draws from its own part of the problems
    rng = random.Random(args.seed * 1000 + rank)
    deck = []  # a shuffled pass over `mine`, refilled when empty: every problem is seen once per epoch
    sample_gen = torch.Generator(device).manual_seed(args.seed * 1000 + rank)
    start_step, history = 0, []
    if args.resume:
        state_path = os.path.join(out_dir, STATE_FILE)
        if not os.path.exists(state_path):
            raise SystemExit(f"error: {state_path} is missing; {out_dir} cannot be resumed")
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        if len(state["ranks"]) != world:
            raise SystemExit(f"error: {out_dir} was written by {len(state['ranks'])} processes, not {world}")
        opt.load_state_dict(state["optimizer"])
        start_step, mine_state = state["step"], state["ranks"][rank]
        deck = mine_state["deck"]
        rng.setstate(mine_state["rng"])
        sample_gen.set_state(mine_state["sample_gen"])
        torch.set_rng_state(mine_state["torch_rng"])
        # lines logged after that checkpoint (a crash between saves) are replaced, not repeated
        with open(os.path.join(out_dir, METRICS_FILE)) as f:
            history = [json.loads(line) for line in f if line.strip()][:start_step]
        print0(f"resuming {out_dir} at step {start_step}")

    def draw_problems(n):
        nonlocal deck
        out = []
        while len(out) < n:
            if not deck:
                deck = list(mine)
                rng.shuffle(deck)
            out.append(deck.pop())
        return out

    def save(step, metrics):
        """Weights, trainer state and metrics staged in one directory and swapped in at once: a crash never
        leaves weights without the optimizer state and metrics that match them."""
        mine_state = {"deck": deck, "rng": rng.getstate(), "sample_gen": sample_gen.get_state(),
                      "torch_rng": torch.get_rng_state()}
        ranks = [None] * world
        if ddp:
            dist.all_gather_object(ranks, mine_state)
        else:
            ranks = [mine_state]
        if master:
            save_run(out_dir, model, tokenizer, {"stage": "rl", "parent": args.ckpt, "args": vars(args),
                                                 "metrics": metrics},
                     {"step": step, "optimizer": opt.state_dict(), "ranks": ranks}, history)
        if ddp:
            dist.barrier()

    metrics_path = os.path.join(out_dir, METRICS_FILE)
    if master:
        os.makedirs(out_dir, exist_ok=True)
        with open(metrics_path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in history)
    print0(f"rl: {args.task} ({len(keep)} problems), {model.num_params():,} parameters, window "
           f"{model.config.window}, sinks {model.config.sinks}, {world} process(es), "
           f"{args.prompts_per_step} x {args.group_size} completions per step")
    stops = set(tokenizer.stop_tokens)
    per_rank = args.prompts_per_step // world
    G = args.group_size
    last_metrics = {}

    bar = tqdm(range(start_step, args.steps), initial=start_step, total=args.steps, desc="rl",
               disable=not master or args.no_progress)
    for step in bar:
        # -- 1. rollouts: sample, score, keep informative groups ---------------------------------------------
        model.eval()
        groups, n_gen_tokens, rounds, gen_time = [], 0, 0, 0.0
        seen_rewards, seen_correct, seen_lengths, seen_truncated = [], [], [], []
        while rounds < args.max_gen_rounds and len(groups) < per_rank:
            rounds += 1
            problems = draw_problems(per_rank - len(groups) if args.dynamic_sampling else per_rank)
            rows = [prompts_all[i] for i in problems for _ in range(G)]
            tokens, logprobs = [], []
            t0 = time.time()
            for s in range(0, len(rows), args.gen_batch):
                with torch.compiler.set_stance("force_eager"):
                    t, lp = generate(sampler, rows[s:s + args.gen_batch], args.max_new_tokens, args.temperature,
                                     top_p=args.top_p, stop_tokens=tokenizer.stop_tokens, generator=sample_gen)
                tokens += t
                logprobs += lp
            gen_time += time.time() - t0  # generate returns lists, so the device is done
            for g, i in enumerate(problems):
                rewards, corrects, truncs = [], [], []
                for j in range(g * G, (g + 1) * G):
                    finished = bool(tokens[j]) and tokens[j][-1] in stops
                    text = tokenizer.decode(tokens[j][:-1] if finished else tokens[j])
                    correct = is_correct(text, train[i]["answer"])
                    reward = float(correct)
                    if args.format_reward and finished and find_answer(text)[1] in ("####", "boxed", "answer is"):
                        reward += args.format_reward
                    reward += overlong_penalty(len(tokens[j]), args.max_new_tokens, args.overlong_cache)
                    rewards.append(reward)
                    corrects.append(correct)
                    truncs.append(not finished)
                    n_gen_tokens += len(tokens[j])
                seen_rewards += rewards
                seen_correct += corrects
                seen_lengths += [len(tokens[j]) for j in range(g * G, (g + 1) * G)]
                seen_truncated += truncs
                r = torch.tensor(rewards)
                if args.dynamic_sampling and not informative_groups(r, G).item():
                    continue
                groups.append({"prompt": prompts_all[i], "completions": tokens[g * G:(g + 1) * G],
                               "logprobs": logprobs[g * G:(g + 1) * G], "rewards": r, "truncated": truncs})
            if not args.dynamic_sampling:
                break
        groups = groups[:per_rank]

        # -- 2. advantages and the old policy's log-probs --------------------------------------------------
        t1 = time.time()
        seqs = []  # one dict per completion
        for grp in groups:
            adv = group_advantages(grp["rewards"], G, args.scale_std)
            for j in range(G):
                seqs.append({"prompt": grp["prompt"], "completion": grp["completions"][j],
                             "sampler": grp["logprobs"][j], "adv": float(adv[j]),
                             "train": not (args.mask_truncated and grp["truncated"][j])})
        n_informative = sum(int(informative_groups(g["rewards"], G).item()) for g in groups)
        n_informative, n_groups = all_reduce([n_informative, len(groups)])
        diff_sum, diff_max, diff_n = 0.0, 0.0, 0
        train_tokens = sum(len(q["prompt"]) + len(q["completion"]) for q in seqs)  # the batch the trainer consumes
        with torch.no_grad():
            for s in range(0, len(seqs), args.micro_batch):
                chunk = seqs[s:s + args.micro_batch]
                inputs, doc_ids, targets, mask = make_batch([q["prompt"] for q in chunk],
                                                            [q["completion"] for q in chunk], device)
                with autocast:
                    old, _ = token_logprobs(model, inputs, doc_ids, targets, mask, args.temperature)
                    refl = None
                    if ref is not None:
                        refl, _ = token_logprobs(ref, inputs, doc_ids, targets, mask, args.temperature)
                sampled_lp = spread([q["sampler"] for q in chunk], mask)
                d = (old - sampled_lp).abs()[mask]
                if d.numel():
                    diff_sum, diff_max = diff_sum + float(d.sum()), max(diff_max, float(d.max()))
                    diff_n += d.numel()
                for k, q in enumerate(chunk):
                    q["old"] = old[k][mask[k]].tolist()
                    q["ref"] = refl[k][mask[k]].tolist() if ref is not None else None

        # -- 3. policy updates -------------------------------------------------------------------------------
        # A batch where every group's rewards are equal has zero advantage everywhere: no step at all, since
        # AdamW's weight decay and momentum would still move the weights.
        skipped = n_informative == 0
        lr = args.lr * min(1.0, (step + 1) / max(1, args.warmup_steps))
        for pg in opt.param_groups:
            pg["lr"] = lr
        clipped_sum, kl_sum, ent_sum, ent_n, tok_sum, grad_norms, n_updates = 0.0, 0.0, 0.0, 0, 0, [], 0
        model.train()
        for epoch in range(0 if skipped else args.ppo_epochs):
            order = list(range(len(seqs)))
            rng.shuffle(order)
            for mb in range(args.minibatches):
                # every rank takes part in every minibatch, even with nothing local, so the collectives match
                part = [seqs[k] for k in order[mb::args.minibatches]]
                masks_local = 0.0
                for q in part:
                    n = len(q["completion"]) if q["train"] else 0
                    masks_local += {"token": n, "grpo": float(n > 0),
                                    "drgrpo": float(n > 0) * args.max_new_tokens}[args.aggregation]
                normaliser = all_reduce([masks_local])[0]
                if normaliser == 0:
                    continue
                for s in range(0, len(part), args.micro_batch):
                    chunk = part[s:s + args.micro_batch]
                    inputs, doc_ids, targets, mask = make_batch([q["prompt"] for q in chunk],
                                                                [q["completion"] for q in chunk], device)
                    old = spread([q["old"] for q in chunk], mask)
                    refl = spread([q["ref"] for q in chunk], mask) if ref is not None else None
                    adv = torch.tensor([q["adv"] for q in chunk], device=device)
                    train_mask = mask & torch.tensor([q["train"] for q in chunk], device=device)[:, None]
                    with autocast:
                        lp, ent = token_logprobs(model, inputs, doc_ids, targets, mask, args.temperature,
                                                 entropy=True)
                    loss, st = policy_loss(lp, old, adv, train_mask, args.clip_low, args.clip_high, args.aggregation,
                                           normaliser, args.max_new_tokens, refl, args.kl_beta)
                    loss.backward()
                    clipped_sum, kl_sum, ent_sum = clipped_sum + st["clipped"], kl_sum + st["kl"], ent_sum + ent
                    tok_sum += int(train_mask.sum())
                    ent_n += int(mask.sum())
                # The loss is already divided by the global normaliser, so summing gradients over ranks gives
                # exactly the gradient of the global loss (a DDP wrapper would average and need rescaling).
                for p in model.parameters():
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                    if ddp:
                        dist.all_reduce(p.grad)
                if args.grad_clip > 0:
                    grad_norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)))
                opt.step()
                opt.zero_grad(set_to_none=True)
                n_updates += 1
        if sampler is not model and n_updates:
            with torch.no_grad():
                for a, b in zip(sampler.parameters(), model.parameters()):
                    a.copy_(b)
        if cuda:
            torch.cuda.synchronize()
        train_time = time.time() - t1

        # -- 4. metrics ----------------------------------------------------------------------------------------
        n = len(seen_rewards)
        grp_correct = torch.tensor(seen_correct, dtype=torch.float32).view(-1, G).mean(1)
        sums = all_reduce([sum(seen_rewards), sum(seen_correct), n, float((grp_correct == 1).sum()),
                           float((grp_correct == 0).sum()), len(grp_correct), sum(seen_lengths), sum(seen_truncated),
                           clipped_sum, kl_sum, ent_sum, ent_n, tok_sum, diff_sum, diff_n, n_gen_tokens,
                           train_tokens])
        (r_sum, c_sum, n_all, all_ok, all_bad, n_grp, len_sum, trunc_sum, clipped_sum, kl_sum, ent_sum, ent_n,
         tok_sum, diff_sum, diff_n, gen_tok, trn_tok) = sums
        len_max, diff_max, gen_time, train_time = all_reduce([max(seen_lengths), diff_max, gen_time, train_time],
                                                             dist.ReduceOp.MAX if ddp else None)
        metrics = {"step": step + 1, "reward": r_sum / n_all, "accuracy": c_sum / n_all,
                   "all_correct": all_ok / n_grp, "all_wrong": all_bad / n_grp, "groups_kept": int(n_groups),
                   "informative_groups": int(n_informative), "gen_rounds": rounds,
                   "completion_len_mean": len_sum / n_all, "completion_len_max": int(len_max),
                   "truncated": trunc_sum / n_all, "clip_frac": clipped_sum / max(tok_sum, 1),
                   "kl": kl_sum / max(tok_sum, 1), "entropy": ent_sum / max(ent_n, 1),
                   "gen_tok_s": gen_tok / max(gen_time, 1e-9), "train_tok_s": trn_tok / max(train_time, 1e-9),
                   "logprob_diff_mean": diff_sum / max(diff_n, 1), "logprob_diff_max": diff_max, "lr": lr,
                   "grad_norm": sum(grad_norms) / len(grad_norms) if grad_norms else 0.0, "updates": n_updates,
                   "skipped": skipped}
        if args.eval_every and held_out and ((step + 1) % args.eval_every == 0 or step + 1 == args.steps):
            if master:
                with torch.compiler.set_stance("force_eager"):
                    m = evaluate_task(sampler, tokenizer, held_out, args.eval_max_new_tokens or args.max_new_tokens,
                                      batch_size=args.gen_batch, progress=False)
                metrics["eval_accuracy"] = m["accuracy"]
                metrics["eval_task"] = eval_task
            if ddp:
                dist.barrier()
        last_metrics = metrics
        history.append(metrics)
        if master:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(metrics) + "\n")
            bar.set_postfix(reward=f"{metrics['reward']:.3f}", acc=f"{metrics['accuracy']:.3f}",
                            len=f"{metrics['completion_len_mean']:.0f}", kept=int(n_groups))
        if (step + 1) % args.save_every == 0 or step + 1 == args.steps:
            save(step + 1, metrics)
    bar.close()
    if start_step >= args.steps:
        print0(f"nothing to do: {out_dir} is already at step {start_step} of {args.steps}")
    elif master:
        print0(f"saved {out_dir}; reward {last_metrics['reward']:.3f}, accuracy {last_metrics['accuracy']:.3f}"
               + (f", eval accuracy {last_metrics['eval_accuracy']:.3f}" if "eval_accuracy" in last_metrics else ""))
    if ddp:
        close_distributed()
    return last_metrics


if __name__ == "__main__":
    try:
        main()
    except ValueError as e:
        sys.exit(f"error: {e}")
