"""
On-policy reinforcement learning (GRPO / DAPO / Dr. GRPO) of a sliding-window model on math problems.

Each step the policy writes G solutions to each of a few training problems, under its own attention window
(model.generate, ring KV cache), and learns from the answer checker's verdict (data.answers.is_correct):

    rollouts    G completions per problem, sampled at --temperature by a bf16 copy of the policy (the sampler);
                groups whose rewards are all equal teach nothing: with dynamic sampling (DAPO) they are dropped
                and more problems are drawn, up to --max-gen-rounds generation rounds
    reward      1 for a correct final answer, else 0 (--reward task); or the controls: random (a fair coin per
                completion, the spurious-reward control) and format (1 when an explicit answer can be read);
                plus an optional bonus for a well-formed answer and DAPO's soft overlong penalty
    advantage   reward minus the mean of its group, divided by the group's std for GRPO and DAPO
    loss        PPO-clipped policy gradient, ratio = pi / pi_old with separate low/high clip ranges (DAPO's
                clip-higher), aggregated over tokens (DAPO), per sequence (GRPO) or by a constant (Dr. GRPO);
                optional k3 KL penalty to the frozen starting model
    pi_old      the policy before this step's updates. The sampler computes it in bf16, the trainer in float32,
                and the two differ; by default the trainer recomputes pi_old and each token's loss is weighted by
                the truncated importance ratio min(pi_old / pi_sampler, --tis-cap) (verl's TIS), which corrects
                the sampling mismatch; --old-logprobs sampler uses the sampler's log-probs as pi_old instead,
                so the clip range covers the mismatch and the recomputing forward pass is saved
    updates     every rollout batch is cut into --minibatches optimizer steps (--ppo-epochs passes), so the
                policy moves between them and the ratio's clip acts

--algo picks a paper's settings; any flag given explicitly overrides its preset:

    algo     advantage        aggregation               clip (low, high)   KL     dynamic sampling   overlong
    grpo     (r - mean) / std per-sequence token mean   0.2, 0.2           0.04   no                 -
    dapo     (r - mean) / std token mean over batch     0.2, 0.28          0      yes                last 20%
    drgrpo   r - mean         token sum / (seqs * max)  0.2, 0.2           0      no                 -

    python rl.py --ckpt ckpt/sft-swa512 --task gsm8k                      # writes ckpt/rl-gsm8k (DAPO)
    python rl.py --ckpt ckpt/sft-swa512 --task gsm8k --resume             # continue an interrupted run
    python rl.py --ckpt ckpt/sft-swa512 --task gsm8k --compile            # decoding and training compiled (GPU)
    python rl.py --ckpt ckpt/sft-swa512 --task gsm8k --algo grpo --out ckpt/rl-grpo
    python rl.py --ckpt ckpt/sft-swa64 --task trace --reward random --out ckpt/rl-random   # the control
    python evaluate.py --ckpt ckpt/sft-swa512 --tasks gsm8k --split train --limit 1024 --samples 16 \
        --temperature 1 --out-dir eval-train        # then RL on the problems it solved sometimes:
    python rl.py --ckpt ckpt/sft-swa512 --task gsm8k --solvable-from eval-train/sft-swa512/gsm8k-train.jsonl
    python rl.py --ckpt ckpt/sft-full --task synthetic --window 64 --sinks 4   # RL under another window
    torchrun --standalone --nproc_per_node=8 rl.py --ckpt ckpt/sft-swa512 --task gsm8k

Output: --out (default ckpt/rl-<task>) is a checkpoint directory (rewritten every --save-every steps and at the
end, meta stage "rl", with the resolved algorithm settings) that also holds
    metrics.jsonl        one line per step: reward, accuracy, group shares, lengths, clip fractions (low/high),
                         ratio and importance-weight statistics, KL, entropy, sampler/trainer log-prob gap, the
                         step's time split (generation, scoring, log-prob passes, training, evaluation), tokens/s,
                         held-out greedy accuracy when evaluated, and on the trace task how the rollouts used the
                         window (fits_window, window_style, restatements_per_step, accuracy_fits, ...)
    trainer_state.pt     optimizer, step, problem order, RNGs of every rank, metrics: what --resume needs

Test: python -m pytest -q tests/test_rl.py
"""
import argparse
import copy
import os
import random
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from common import (DATA_DIR, EVAL_TASK, METRICS_FILE, STATE_FILE, MetricsLog, add_window_args, apply_window,
                    build_prompt, check_window_args, close_distributed, completion_texts, evaluate_task, fail,
                    init_distributed, load_state, load_task, print0, read_records, run_main, save_run, weights_id)
from data import trace
from data.answers import SCORE_WORKERS, find_answer, is_correct_many
import model as model_module
from model import generate_continuous, load_checkpoint, recover_checkpoint

ALGOS = {  # as each paper defines it; overlong: DAPO's soft penalty over the last 20% of the length limit
    "grpo": {"scale_std": True, "aggregation": "grpo", "clip_low": 0.2, "clip_high": 0.2, "kl_beta": 0.04,
             "dynamic_sampling": False, "overlong_fraction": 0.0},
    "dapo": {"scale_std": True, "aggregation": "token", "clip_low": 0.2, "clip_high": 0.28, "kl_beta": 0.0,
             "dynamic_sampling": True, "overlong_fraction": 0.2},
    "drgrpo": {"scale_std": False, "aggregation": "drgrpo", "clip_low": 0.2, "clip_high": 0.2, "kl_beta": 0.0,
               "dynamic_sampling": False, "overlong_fraction": 0.0},
}
AGGREGATIONS = ("token", "grpo", "drgrpo")
REWARDS = ("task", "random", "format")
EXPLICIT_ANSWERS = ("####", "boxed", "answer is")  # find_answer's methods that mean the model stated an answer


# ----------------------------------------------------------------------------------------------------------
# The loss math, as small pure functions so that tests can check them by hand.

def group_advantages(rewards, group_size, scale_by_std=False, eps=1e-6):
    """rewards (N * G,), grouped consecutively -> advantages (N * G,): reward minus its group's mean.
    Dividing by the group's std (GRPO, DAPO) up-weights near-unanimous groups; Dr. GRPO leaves it out."""
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
    """Per-token k3 estimator of KL(policy || reference) on tokens sampled from the policy: exp(d) - d - 1 with
    d = ref - policy, unbiased and >= 0. d is clamped to [-20, 20] and the result to at most 10 (verl's
    low_var_kl), so that one rare token cannot blow up the loss."""
    d = (ref_logprobs - logprobs).clamp(-20, 20)
    return (torch.exp(d) - d - 1).clamp(max=10)


def truncated_is_weights(old_logprobs, sampler_logprobs, cap):
    """Per-token importance weights min(pi_old / pi_sampler, cap) (truncated importance sampling): the rollouts
    were drawn from the sampler, not from pi_old, and the truncation bounds the variance. Returns (weights,
    truncated) where truncated marks the tokens whose ratio exceeded the cap."""
    ratio = torch.exp(old_logprobs - sampler_logprobs)
    return ratio.clamp(max=cap), ratio > cap


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
                normaliser=None, max_len=None, ref_logprobs=None, kl_beta=0.0, is_weights=None):
    """PPO-clipped policy-gradient loss, optionally importance-weighted, with an optional k3 KL penalty.

    logprobs, old_logprobs, ref_logprobs, is_weights, mask: (B, T), one entry per predicted token (mask:
    completion tokens that are trained); advantages: (B,), one per sequence. The ratio exp(logprobs - old) is
    clipped to [1 - clip_low, 1 + clip_high]; the pessimistic (min) objective means a token stops pushing once its
    probability moved past the clip range in the direction its advantage wants. is_weights (no gradient) scale
    each token's policy-gradient term (truncated importance sampling).
    Returns (loss, stats): token sums over the mask of "clipped_low" (advantage < 0, ratio below the range),
    "clipped_high" (advantage > 0, ratio above it), "ratio", "kl", and the largest ratio, "ratio_max".
    """
    mask = mask.to(logprobs.dtype)
    ratio = torch.exp(logprobs - old_logprobs)
    adv = advantages[:, None].to(logprobs.dtype)
    unclipped = ratio * adv
    clipped = ratio.clamp(1 - clip_low, 1 + clip_high) * adv
    per_token = -torch.minimum(unclipped, clipped)
    if is_weights is not None:
        per_token = per_token * is_weights.detach()
    kl = torch.zeros_like(per_token)
    if ref_logprobs is not None:
        kl = kl_k3(logprobs, ref_logprobs)
        per_token = per_token + kl_beta * kl
    if normaliser is None:
        normaliser = loss_normaliser(mask, aggregation, max_len)
    if aggregation == "grpo":
        seq_mean = (per_token * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
        loss = seq_mean.sum() / max(normaliser, 1.0)
    elif aggregation in ("token", "drgrpo"):
        loss = (per_token * mask).sum() / max(normaliser, 1.0)
    else:
        raise ValueError(f"unknown aggregation {aggregation!r} (choose from {', '.join(AGGREGATIONS)})")
    r = ratio.detach()
    stats = {"clipped_low": float(((adv < 0) & (r < 1 - clip_low)).to(mask.dtype).mul(mask).sum()),
             "clipped_high": float(((adv > 0) & (r > 1 + clip_high)).to(mask.dtype).mul(mask).sum()),
             "ratio": float((r * mask).sum()), "ratio_max": float(r[mask.bool()].max()) if mask.any() else 0.0,
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


def token_logprobs(model, inputs, doc_ids, targets, mask, temperature, entropy=False, pad_to=None):
    """Log-probabilities of the targets under softmax(logits / temperature), as generate computes them,
    at the masked positions only (prompt logits are never needed). Optionally the summed entropy too.
    pad_to (rows, multiple): the forward pass runs with padding added, up to at least `rows` rows and a multiple of
    `multiple` positions, which no token attends and whose logits are dropped (compiled_shape)."""
    B, T = inputs.shape
    if pad_to is not None:
        pad = (0, -T % pad_to[1], 0, max(pad_to[0] - B, 0))
        inputs, doc_ids = F.pad(inputs, pad), F.pad(doc_ids, pad, value=-1)
    logits = model(inputs, doc_ids=doc_ids)[:B, :T]
    logp = (logits[mask] / temperature).log_softmax(-1)
    picked = logp.gather(-1, targets[mask][:, None]).squeeze(-1)
    out = torch.zeros(mask.shape, dtype=picked.dtype, device=picked.device).masked_scatter(mask, picked)
    ent = float(-(logp.detach().exp() * logp.detach()).sum()) if entropy else 0.0
    return out, ent


def compiled_shape(args):
    """token_logprobs's pad_to for the policy's forward passes. Compiled blocks (--compile) are compiled anew for
    every input shape, and rollouts come in ever-new lengths and numbers: padded to --batch-size rows and a multiple
    of 128 positions, a few shapes serve every micro-batch."""
    return (args.batch_size, 128) if args.compile else None


# ----------------------------------------------------------------------------------------------------------
# The command line

def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = parser.add_argument_group("model and data")
    g.add_argument("--ckpt", required=True, help="starting checkpoint (also the KL reference)")
    g.add_argument("--task", default="gsm8k", help="training problems: <data-dir>/<task>/train.jsonl")
    g.add_argument("--eval-task", default=None, help="held-out problems: <data-dir>/<eval-task>/test.jsonl "
                   "(default: the task itself, math500 for math)")
    g.add_argument("--data-dir", default=DATA_DIR, help="directory holding <task>/{train,test}.jsonl")
    g.add_argument("--out", default=None, help="checkpoint directory to write (default ckpt/rl-<task>)")
    g.add_argument("--resume", action="store_true", help="continue --out: weights, optimizer, step, RNGs")
    g.add_argument("--solvable-from", default=None,
                   help="records of --ckpt sampled several times on the training problems (evaluate.py --split "
                        "train --samples 16 --temperature 1): train only on those it solved sometimes, not always")
    add_window_args(g)
    g = parser.add_argument_group("rollouts")
    g.add_argument("--steps", type=int, default=200, help="RL steps (one rollout batch each)")
    g.add_argument("--prompts-per-step", type=int, default=32, help="problems per step, over all GPUs")
    g.add_argument("--group-size", type=int, default=8, help="completions sampled per problem (G)")
    g.add_argument("--max-new-tokens", type=int, default=512, help="completion length limit")
    g.add_argument("--max-prompt-tokens", type=int, default=1024, help="longer training problems are skipped")
    g.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (> 0)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    g.add_argument("--gen-batch", type=int, default=256, help="sequences generated together per GPU")
    g.add_argument("--dynamic-sampling", action=argparse.BooleanOptionalAction, default=None,
                   help="drop groups whose rewards are all equal and draw more problems (default: --algo's)")
    g.add_argument("--max-gen-rounds", type=int, default=3, help="generation rounds per step to refill groups")
    g.add_argument("--score-workers", type=int, default=SCORE_WORKERS,
                   help="processes that check answers symbolically (math_verify, tens of ms an answer), spawned "
                        "once per process; 1 or less: none, all in this process")
    g = parser.add_argument_group("reward")
    g.add_argument("--reward", default="task", choices=REWARDS,
                   help="task: 1 for a correct answer; random: a fair coin per completion (spurious-reward "
                        "control); format: 1 when an explicit answer (####, \\boxed{}, 'the answer is') is given")
    g.add_argument("--format-reward", type=float, default=0.0,
                   help="added when the completion finishes and states its answer explicitly")
    g.add_argument("--overlong-cache", type=int, default=None,
                   help="DAPO's soft overlong penalty over the last N tokens before --max-new-tokens "
                        "(0 = off; default: --algo's)")
    g.add_argument("--mask-truncated", action="store_true",
                   help="completions that hit --max-new-tokens get no loss (they still count in group means)")
    g = parser.add_argument_group("algorithm and loss")
    g.add_argument("--algo", default="dapo", choices=sorted(ALGOS),
                   help="the paper whose settings the flags below default to (see the table above)")
    g.add_argument("--scale-std", action=argparse.BooleanOptionalAction, default=None,
                   help="divide advantages by the group std (default: --algo's)")
    g.add_argument("--aggregation", default=None, choices=AGGREGATIONS,
                   help="token: mean over all completion tokens of the batch; grpo: mean of per-sequence means; "
                        "drgrpo: token sum / (sequences * max-new-tokens) (default: --algo's)")
    g.add_argument("--clip-low", type=float, default=None, help="ratio clipped below at 1 - clip-low")
    g.add_argument("--clip-high", type=float, default=None, help="ratio clipped above at 1 + clip-high")
    g.add_argument("--kl-beta", type=float, default=None, help="weight of the k3 KL penalty to the start model")
    g.add_argument("--old-logprobs", default="trainer", choices=("trainer", "sampler"),
                   help="pi_old in the ratio: recomputed by the trainer (with --tis-cap correcting the sampler's "
                        "mismatch), or the sampler's own (the clip covers the mismatch; one forward pass less)")
    g.add_argument("--tis-cap", type=float, default=2.0,
                   help="truncated importance sampling: weight each token by min(pi_old / pi_sampler, cap) "
                        "(0 = off; only with --old-logprobs trainer)")
    g.add_argument("--ppo-epochs", type=int, default=1, help="passes over each rollout batch")
    g.add_argument("--minibatches", type=int, default=4, help="optimizer steps per pass over the rollout batch")
    g.add_argument("--batch-size", type=int, default=8, help="sequences per forward/backward pass (memory only)")
    g = parser.add_argument_group("optimizer")
    g.add_argument("--lr", type=float, default=1e-6, help="AdamW learning rate")
    g.add_argument("--warmup-steps", type=int, default=10, help="linear learning-rate warmup (RL steps)")
    g.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay")
    g.add_argument("--grad-clip", type=float, default=1.0, help="gradient norm clip (0 = off)")
    g = parser.add_argument_group("bookkeeping")
    g.add_argument("--eval-every", type=int, default=50, help="greedy evaluation every N steps (0 = off)")
    g.add_argument("--eval-limit", type=int, default=64, help="held-out problems per evaluation")
    g.add_argument("--eval-max-new-tokens", type=int, default=None, help="default: --max-new-tokens")
    g.add_argument("--save-every", type=int, default=50, help="checkpoint every N steps (and at the end)")
    g.add_argument("--seed", type=int, default=0, help="problem order, sampling and random-reward seed")
    g.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    g.add_argument("--compile", action="store_true", help="torch.compile each transformer block's training passes "
                   "and the decoding step (as SWARR_DECODE_COMPILE=1 does), for speed: its greedy tokens are as close "
                   "to float32's as the eager step's but not identical to them (bench/README.md)")
    g.add_argument("--grad-checkpoint", action="store_true", help="recompute activations in backward (less memory)")
    g.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    args = parser.parse_args(argv)
    check_window_args(args)
    check_args(args)
    return args


def check_args(args):
    """Resolve --algo into the flags left unset, then refuse settings that cannot run, each with one line."""
    preset = ALGOS[args.algo]
    for name, value in preset.items():
        if name != "overlong_fraction" and getattr(args, name) is None:
            setattr(args, name, value)
    if args.overlong_cache is None:
        args.overlong_cache = round(preset["overlong_fraction"] * args.max_new_tokens)
    if args.group_size < 2:
        fail("--group-size must be >= 2 (advantages compare answers within a group)")
    if args.temperature <= 0:
        fail("--temperature must be > 0 (RL needs sampled, varied answers)")
    if not 0 < args.top_p <= 1:
        fail("--top-p must be in (0, 1]")
    if not (0 <= args.clip_low < 1 and args.clip_high >= 0):
        fail("--clip-low must be in [0, 1) and --clip-high >= 0")
    for name in ("steps", "prompts_per_step", "max_new_tokens", "ppo_epochs", "minibatches", "batch_size",
                 "gen_batch", "max_gen_rounds", "max_prompt_tokens", "save_every", "eval_limit"):
        if getattr(args, name) < 1:
            fail(f"--{name.replace('_', '-')} must be >= 1")
    if not 0 <= args.overlong_cache < args.max_new_tokens:
        fail("--overlong-cache must be in [0, --max-new-tokens)")
    if args.kl_beta < 0 or args.lr <= 0 or args.eval_every < 0 or args.tis_cap < 0 or args.warmup_steps < 0:
        fail("--kl-beta, --tis-cap, --warmup-steps and --eval-every must be >= 0 and --lr > 0")
    if args.old_logprobs == "sampler" and args.tis_cap:
        args.tis_cap = 0.0  # the ratio is already against the sampler: there is nothing left to correct


def solvable_problems(problems, path, weights):
    """The problems that the records at `path` (an evaluation of the starting model, several samples each) show
    solved sometimes but not always: the only ones whose group can hold both rewards, so RL learns from them."""
    if not os.path.isfile(path):
        fail(f"--solvable-from {path} not found")
    records = read_records(path)
    if any(r["settings"].get("weights") != weights for r in records):
        fail(f"--solvable-from {path} holds records of other weights than --ckpt ({weights})")
    if all(len(r["correct"]) < 2 for r in records):
        fail(f"--solvable-from {path} has one completion per problem: sample several (--samples 16 --temperature 1)")
    rate = {r["id"]: sum(r["correct"]) / len(r["correct"]) for r in records}
    kept = [p for p in problems if 0 < rate.get(p["id"], 0) < 1]
    if not kept:
        fail(f"--solvable-from {path}: no training problem was solved sometimes but not always")
    return kept


def algorithm_settings(args):
    """What the run's loss and sampling actually are, after --algo and the explicit flags (printed and saved)."""
    names = ("algo", "scale_std", "aggregation", "clip_low", "clip_high", "kl_beta", "dynamic_sampling",
             "overlong_cache", "old_logprobs", "tis_cap", "minibatches", "ppo_epochs", "reward")
    return {name: getattr(args, name) for name in names}


# ----------------------------------------------------------------------------------------------------------
# The steps of one RL step: rollouts -> advantages -> old log-probs -> updates -> metrics

def reward_of(text, finished, length, correct, args, coin):
    """(reward, correct) of one completion, given the task's verdict on it (data.answers.is_correct). `correct` is
    returned whatever reward is trained on, so a control run still reports its true accuracy."""
    explicit = find_answer(text)[1] in EXPLICIT_ANSWERS
    if args.reward == "random":
        reward = float(coin.random() < 0.5)  # drawn only here, so the coin's sequence depends on the seed alone
    else:
        reward = float(explicit if args.reward == "format" else correct)
    if args.format_reward and finished and explicit:
        reward += args.format_reward
    return reward + overlong_penalty(length, args.max_new_tokens, args.overlong_cache), correct


def collect_rollouts(sampler, tokenizer, problems, prompts, draw, n_groups, args, sample_gen, coin, m):
    """Sample G completions for each of n_groups problems and score them. With dynamic sampling, groups whose
    rewards are all equal are dropped and replaced by new problems, up to --max-gen-rounds rounds. Returns the
    kept groups; adds what every completion looked like (kept or not) to the metric sums m, on the trace task
    also how it used the window (count_trajectory)."""
    G, groups = args.group_size, []
    for _ in range(args.max_gen_rounds):
        m["gen_rounds"] += 1
        chosen = draw(n_groups - len(groups))
        rows = [prompts[i] for i in chosen for _ in range(G)]
        t0 = time.time()
        # --gen-batch rows decode at once; a finished row takes the next waiting prompt (continuous batching)
        with torch.compiler.set_stance("force_eager"):  # compiled blocks would recompile per cache shape
            tokens, logprobs = generate_continuous(sampler, rows, args.max_new_tokens, args.gen_batch,
                                                   args.temperature, top_p=args.top_p,
                                                   stop_tokens=tokenizer.stop_tokens, generator=sample_gen)
        m["gen_s"] += time.time() - t0  # the results are lists, so the device is done
        t0 = time.time()
        ends, texts = completion_texts(tokenizer, tokens)
        verdicts = is_correct_many(texts, [problems[i]["answer"] for i in chosen for _ in range(G)],
                                   args.score_workers)
        for g, i in enumerate(chosen):
            rewards, correct = [], []
            finished = ends[g * G:(g + 1) * G]
            for j, (t, done) in enumerate(zip(tokens[g * G:(g + 1) * G], finished)):
                r, ok = reward_of(texts[g * G + j], done, len(t), verdicts[g * G + j], args, coin)
                rewards.append(r)
                correct.append(ok)
                if trace.is_trace_task(args.task):
                    count_trajectory(trace.trajectory(prompts[i], t[:-1] if done else t, tokenizer,
                                                      sampler.config.window), ok, m)
            lengths = [len(t) for t in tokens[g * G:(g + 1) * G]]
            m["completions"] += G
            m["reward"] += sum(rewards)
            m["correct"] += sum(correct)
            m["all_correct"] += all(correct)
            m["all_wrong"] += not any(correct)
            m["groups_seen"] += 1
            m["length"] += sum(lengths)
            m["length_max"] = max(m["length_max"], max(lengths))
            m["truncated"] += finished.count(False)
            m["gen_tokens"] += sum(lengths)
            rewards = torch.tensor(rewards)
            if args.dynamic_sampling and not informative_groups(rewards, G).item():
                continue
            groups.append({"prompt": prompts[i], "completions": tokens[g * G:(g + 1) * G],
                           "sampler": logprobs[g * G:(g + 1) * G], "rewards": rewards, "finished": finished})
        m["score_s"] += time.time() - t0  # decoding, answer checking and (trace task) parsing on the host
        if not args.dynamic_sampling or len(groups) >= n_groups:
            break
    return groups


TRAJECTORY_SUMS = ("traj", "fits", "fits_correct", "window_style", "full_style", "restated", "restated_n",
                   "max_distance", "max_distance_n")


def count_trajectory(t, correct, m):
    """Add one trace-task completion's use of the window (data.trace.trajectory) to the metric sums m."""
    m["traj"] += 1
    m["fits"] += t["fits"]
    m["fits_correct"] += t["fits"] and correct
    m["window_style"] += t["style"] == "window"
    m["full_style"] += t["style"] == "full"
    if t["restatements_per_step"] is not None:
        m["restated"] += t["restatements_per_step"]
        m["restated_n"] += 1
    if t["max_distance"] is not None:
        m["max_distance"] += t["max_distance"]
        m["max_distance_n"] += 1


def trajectory_metrics(m):
    """The metrics.jsonl fields of the trace task: how the step's completions used the window."""
    if not m["traj"]:
        return {}
    n, fits = m["traj"], m["fits"]
    return {"fits_window": fits / n, "window_style": m["window_style"] / n, "full_style": m["full_style"] / n,
            "restatements_per_step": m["restated"] / m["restated_n"] if m["restated_n"] else None,
            "max_distance_mean": m["max_distance"] / m["max_distance_n"] if m["max_distance_n"] else None,
            "accuracy_fits": m["fits_correct"] / fits if fits else None,
            "accuracy_not_fits": (m["correct"] - m["fits_correct"]) / (n - fits) if n > fits else None}


def sequences(groups, args):
    """One dict per completion: its prompt, tokens, sampler log-probs, advantage, and whether it is trained."""
    seqs = []
    for grp in groups:
        adv = group_advantages(grp["rewards"], args.group_size, args.scale_std)
        for j in range(args.group_size):
            seqs.append({"prompt": grp["prompt"], "completion": grp["completions"][j], "sampler": grp["sampler"][j],
                         "adv": float(adv[j]), "train": not (args.mask_truncated and not grp["finished"][j])})
    return seqs


@torch.no_grad()
def old_logprobs(model, ref, seqs, args, autocast, device, m):
    """pi_old (the trainer's, or the sampler's own) and the reference model's log-probs (when KL is on), per token
    of every completion, stored in each sequence dict; the trainer/sampler gap goes into the metric sums m."""
    if args.old_logprobs == "sampler" and ref is None:  # nothing to compute: no forward pass at all
        for q in seqs:
            q["old"], q["ref"] = q["sampler"], None
        return
    for s in range(0, len(seqs), args.batch_size):
        chunk = seqs[s:s + args.batch_size]
        inputs, doc_ids, targets, mask = make_batch([q["prompt"] for q in chunk], [q["completion"] for q in chunk],
                                                    device)
        sampled = spread([q["sampler"] for q in chunk], mask)
        with autocast:
            old = sampled
            if args.old_logprobs == "trainer":
                old, _ = token_logprobs(model, inputs, doc_ids, targets, mask, args.temperature,
                                        pad_to=compiled_shape(args))
                gap = (old - sampled).abs()[mask]
                m["gap"] += float(gap.sum())
                m["gap_max"] = max(m["gap_max"], float(gap.max()) if gap.numel() else 0.0)
                m["gap_tokens"] += gap.numel()
            if ref is not None:
                refl, _ = token_logprobs(ref, inputs, doc_ids, targets, mask, args.temperature)
        for k, q in enumerate(chunk):
            q["old"] = old[k][mask[k]].tolist()
            q["ref"] = refl[k][mask[k]].tolist() if ref is not None else None


def normaliser_of(part, args, all_reduce):
    """The loss's denominator for one minibatch, summed over every rank (see loss_normaliser)."""
    local = 0.0
    for q in part:
        n = len(q["completion"]) if q["train"] else 0
        local += {"token": n, "grpo": float(n > 0), "drgrpo": float(n > 0) * args.max_new_tokens}[args.aggregation]
    return all_reduce({"n": local})["n"]


def update(model, opt, seqs, args, rng, autocast, device, all_reduce, ddp, m):
    """--ppo-epochs passes over the rollout batch, each cut into --minibatches optimizer steps. Every rank takes
    part in every minibatch, even with nothing local, so that the collectives match."""
    for _ in range(args.ppo_epochs):
        order = list(range(len(seqs)))
        rng.shuffle(order)
        for mb in range(args.minibatches):
            part = [seqs[k] for k in order[mb::args.minibatches]]
            normaliser = normaliser_of(part, args, all_reduce)
            if normaliser == 0:
                continue
            for s in range(0, len(part), args.batch_size):
                chunk = part[s:s + args.batch_size]
                inputs, doc_ids, targets, mask = make_batch([q["prompt"] for q in chunk],
                                                            [q["completion"] for q in chunk], device)
                old = spread([q["old"] for q in chunk], mask)
                ref = spread([q["ref"] for q in chunk], mask) if chunk[0]["ref"] is not None else None
                weights = None
                if args.tis_cap:
                    weights, truncated = truncated_is_weights(old, spread([q["sampler"] for q in chunk], mask),
                                                              args.tis_cap)
                    m["is_weight"] += float(weights[mask].sum())
                    m["is_truncated"] += float(truncated[mask].sum())
                adv = torch.tensor([q["adv"] for q in chunk], device=device)
                trained = mask & torch.tensor([q["train"] for q in chunk], device=device)[:, None]
                with autocast:
                    lp, entropy = token_logprobs(model, inputs, doc_ids, targets, mask, args.temperature,
                                                 entropy=True, pad_to=compiled_shape(args))
                loss, st = policy_loss(lp, old, adv, trained, args.clip_low, args.clip_high, args.aggregation,
                                       normaliser, args.max_new_tokens, ref, args.kl_beta, weights)
                loss.backward()
                for key in ("clipped_low", "clipped_high", "ratio", "kl"):
                    m[key] += st[key]
                m["ratio_max"] = max(m["ratio_max"], st["ratio_max"])
                m["entropy"] += entropy
                m["trained_tokens"] += int(trained.sum())
                m["tokens"] += int(mask.sum())
            # The loss is already divided by the global normaliser, so summing gradients over ranks gives exactly
            # the gradient of the global loss (a DDP wrapper would average and need rescaling).
            for p in model.parameters():
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                if ddp:
                    dist.all_reduce(p.grad)
            if args.grad_clip > 0:
                m["grad_norm"] += float(torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip))
            opt.step()
            opt.zero_grad(set_to_none=True)
            m["updates"] += 1


def step_metrics(m, step, lr, args):
    """The metrics.jsonl line of one step from the metric sums (already reduced over ranks)."""
    n, groups, tokens = max(m["completions"], 1), max(m["groups_seen"], 1), max(m["trained_tokens"], 1)
    return {"step": step, "reward": m["reward"] / n, "accuracy": m["correct"] / n,
            "all_correct": m["all_correct"] / groups, "all_wrong": m["all_wrong"] / groups,
            "groups_kept": int(m["groups_kept"]), "informative_groups": int(m["informative"]),
            "gen_rounds": int(m["gen_rounds"]), "completion_len_mean": m["length"] / n,
            "completion_len_max": int(m["length_max"]), "truncated": m["truncated"] / n,
            "clip_frac": (m["clipped_low"] + m["clipped_high"]) / tokens, "clip_frac_low": m["clipped_low"] / tokens,
            "clip_frac_high": m["clipped_high"] / tokens, "ratio_mean": m["ratio"] / tokens,
            "ratio_max": m["ratio_max"], "is_weight_mean": m["is_weight"] / tokens if args.tis_cap else None,
            "is_truncated": m["is_truncated"] / tokens if args.tis_cap else None, "kl": m["kl"] / tokens,
            "entropy": m["entropy"] / max(m["tokens"], 1),
            "logprob_diff_mean": m["gap"] / m["gap_tokens"] if m["gap_tokens"] else None,
            "logprob_diff_max": m["gap_max"] if m["gap_tokens"] else None, "lr": lr,
            "grad_norm": m["grad_norm"] / m["updates"] if m["updates"] else 0.0, "updates": int(m["updates"]),
            "skipped": m["informative"] == 0, "gen_tok_s": m["gen_tokens"] / max(m["gen_s"], 1e-9),
            "gen_s": m["gen_s"], "score_s": m["score_s"], "logprob_s": m["logprob_s"], "train_s": m["train_s"],
            "eval_s": 0.0,
            "step_s": m["step_s"], **trajectory_metrics(m)}


MAXED = ("length_max", "ratio_max", "gap_max", "gen_s", "score_s", "logprob_s", "train_s", "step_s")  # max over ranks


def reducer(device, ddp):
    """all_reduce(dict) -> dict: sums over ranks, except the keys in MAXED (largest over ranks)."""
    def all_reduce(values):
        if not ddp:
            return dict(values)
        keys = sorted(values)
        summed = torch.tensor([0.0 if k in MAXED else float(values[k]) for k in keys], dtype=torch.float64,
                              device=device)
        maxed = torch.tensor([float(values[k]) if k in MAXED else 0.0 for k in keys], dtype=torch.float64,
                             device=device)
        dist.all_reduce(summed)
        dist.all_reduce(maxed, op=dist.ReduceOp.MAX)
        return {k: (mx if k in MAXED else s) for k, s, mx in zip(keys, summed.tolist(), maxed.tolist())}
    return all_reduce


# ----------------------------------------------------------------------------------------------------------

def main(argv=None):
    args = parse_args(argv)
    rank, world, device = init_distributed(args.device)
    ddp, master, cuda = world > 1, rank == 0, device.type == "cuda"
    all_reduce = reducer(device, ddp)
    if args.prompts_per_step % world:
        fail(f"--prompts-per-step ({args.prompts_per_step}) must be a multiple of the number of processes ({world})")
    out = args.out or os.path.join("ckpt", f"rl-{args.task}")
    recover_checkpoint(out)  # a save cut between its two renames leaves the newest copy beside --out
    if os.path.realpath(out) == os.path.realpath(args.ckpt):
        fail(f"--out {out} is the starting checkpoint; choose another --out")
    if args.resume and not os.path.isfile(os.path.join(out, STATE_FILE)):
        fail(f"nothing to resume: {out} has no {STATE_FILE} (run without --resume to start)")
    if not args.resume and any(os.path.exists(os.path.join(out, f)) for f in ("meta.json", STATE_FILE)):
        fail(f"{out} already holds a checkpoint; pass --resume to continue it or choose another --out")

    # -- data and model ----------------------------------------------------------------------------------------
    problems = load_task(args.data_dir, args.task, "train")
    if args.solvable_from:
        problems = solvable_problems(problems, args.solvable_from, weights_id(args.ckpt))
        print0(f"{len(problems)} training problems solved sometimes, not always, in {args.solvable_from}")
    eval_task = args.eval_task or EVAL_TASK.get(args.task, args.task)
    held_out = load_task(args.data_dir, eval_task, "test")[:args.eval_limit] if args.eval_every else []
    model, tokenizer, _ = load_checkpoint(args.ckpt, device=device)  # float32 master weights
    apply_window(model, args)
    ref = copy.deepcopy(model).eval().requires_grad_(False) if args.kl_beta > 0 else None  # the frozen start
    if args.resume:
        resumed, _, meta = load_checkpoint(out, device=device)
        if meta.get("stage") != "rl":
            fail(f"{out} is a {meta.get('stage')!r} checkpoint, not an rl one")
        model.load_state_dict(resumed.state_dict())
        del resumed
    # Rollouts come from a bf16 copy of the policy on the GPU: decoding is memory-bound, and autocast would re-cast
    # every weight at every decoding step. The copy is refreshed after every step's updates.
    sampler = copy.deepcopy(model).to(torch.bfloat16).eval().requires_grad_(False) if cuda else model
    model.gradient_checkpointing = args.grad_checkpoint
    if args.compile:
        model.compile_blocks()
        model_module.DECODE_COMPILE = True  # read by every Decoder this process makes
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.999),
                            fused=cuda)

    prompts = [build_prompt(tokenizer, p) for p in problems]
    keep = [i for i, p in enumerate(prompts) if len(p) <= args.max_prompt_tokens]
    if not problems:
        fail(f"{args.data_dir}/{args.task}/train.jsonl has no problems")
    if not keep:
        fail(f"every problem of {args.task} is longer than --max-prompt-tokens ({args.max_prompt_tokens})")
    if len(keep) < len(problems):
        print0(f"skipping {len(problems) - len(keep)} problems longer than {args.max_prompt_tokens} prompt tokens")
    mine = keep[rank::world]  # each rank draws from its own part of the problems

    # -- state: what --resume restores ---------------------------------------------------------------------------
    rng = random.Random(args.seed * 1000 + rank)  # problem order and minibatch shuffles
    coin = random.Random(f"reward:{args.seed}:{rank}")  # the random-reward control's coin
    sample_gen = torch.Generator(device).manual_seed(args.seed * 1000 + rank)
    deck, start_step, history = [], 0, []  # deck: a shuffled pass over `mine`, refilled when empty
    if args.resume:
        state = load_state(os.path.join(out, STATE_FILE))
        if len(state["ranks"]) != world:
            fail(f"{out} was written by {len(state['ranks'])} processes, not {world}")
        opt.load_state_dict(state["optimizer"])
        start_step, history, mine_state = state["step"], state["history"], state["ranks"][rank]
        deck = mine_state["deck"]
        rng.setstate(mine_state["rng"])
        coin.setstate(mine_state["coin"])
        sample_gen.set_state(mine_state["sample_gen"])
        torch.set_rng_state(mine_state["torch_rng"])
        print0(f"resuming {out} at step {start_step}")

    def draw(n):
        nonlocal deck
        chosen = []
        while len(chosen) < n:
            if not deck:
                deck = list(mine)
                rng.shuffle(deck)
            chosen.append(deck.pop())
        return chosen

    def save(step):
        mine_state = {"deck": deck, "rng": rng.getstate(), "coin": coin.getstate(),
                      "sample_gen": sample_gen.get_state(), "torch_rng": torch.get_rng_state()}
        ranks = [None] * world
        if ddp:
            dist.all_gather_object(ranks, mine_state)
        else:
            ranks = [mine_state]
        if master:
            meta = {"stage": "rl", "parent": args.ckpt, "args": vars(args), "algorithm": settings,
                    "metrics": log.history[-1] if log.history else {}}
            save_run(out, model, tokenizer, meta,
                     {"step": step, "optimizer": opt.state_dict(), "ranks": ranks, "history": log.history},
                     log.history)
        if ddp:
            dist.barrier()

    settings = algorithm_settings(args)
    log = MetricsLog(os.path.join(out, METRICS_FILE), history, write=master)
    print0(f"rl: {args.task} ({len(keep)} problems), {model.num_params():,} parameters, window "
           f"{model.config.window}, sinks {model.config.sinks}, {world} process(es), "
           f"{args.prompts_per_step} x {args.group_size} completions per step")
    print0("algorithm: " + ", ".join(f"{k} {v}" for k, v in settings.items()))

    bar = tqdm(range(start_step, args.steps), initial=start_step, total=args.steps, desc="rl",
               disable=not master or args.no_progress)
    for step in bar:
        t_step = time.time()
        m = {k: 0.0 for k in ("gen_rounds", "completions", "reward", "correct", "all_correct", "all_wrong",
                              "groups_seen", "length", "length_max", "truncated", "gen_tokens", "gen_s", "score_s",
                              "gap", "gap_max", "gap_tokens", "logprob_s", "is_weight", "is_truncated", "clipped_low",
                              "clipped_high", "ratio", "ratio_max", "kl", "entropy", "trained_tokens", "tokens",
                              "grad_norm", "updates", "train_s", "step_s", "groups_kept", "informative",
                              *TRAJECTORY_SUMS)}
        # 1. rollouts: sample and score; with dynamic sampling only groups whose rewards differ are kept
        model.eval()
        groups = collect_rollouts(sampler, tokenizer, problems, prompts, draw, args.prompts_per_step // world,
                                  args, sample_gen, coin, m)
        groups = groups[:args.prompts_per_step // world]
        m["groups_kept"] = len(groups)
        m["informative"] = sum(int(informative_groups(g["rewards"], args.group_size).item()) for g in groups)
        # 2. advantages, and pi_old / reference log-probs for every completion token
        seqs = sequences(groups, args)
        t0 = time.time()
        old_logprobs(model, ref, seqs, args, autocast, device, m)
        m["logprob_s"] = time.time() - t0
        # 3. updates. A batch where every group's rewards are equal has zero advantage everywhere: no step at all,
        # since AdamW's weight decay and momentum would still move the weights.
        t0 = time.time()
        lr = args.lr * min(1.0, (step + 1) / max(1, args.warmup_steps))
        for pg in opt.param_groups:
            pg["lr"] = lr
        model.train()
        if all_reduce({"n": m["informative"]})["n"] > 0:
            update(model, opt, seqs, args, rng, autocast, device, all_reduce, ddp, m)
        if sampler is not model and m["updates"]:
            with torch.no_grad():
                for a, b in zip(sampler.parameters(), model.parameters()):
                    a.copy_(b)
        if cuda:
            torch.cuda.synchronize()
        m["train_s"] = time.time() - t0
        m["step_s"] = time.time() - t_step
        # 4. metrics, and a greedy evaluation now and then
        metrics = step_metrics(all_reduce(m), step + 1, lr, args)
        if args.eval_every and held_out and ((step + 1) % args.eval_every == 0 or step + 1 == args.steps):
            t0 = time.time()
            if master:
                with torch.compiler.set_stance("force_eager"):
                    result = evaluate_task(sampler, tokenizer, held_out,
                                           args.eval_max_new_tokens or args.max_new_tokens,
                                           batch_size=args.gen_batch, progress=False)
                metrics.update(eval_accuracy=result["accuracy"], eval_task=eval_task)
            if ddp:
                dist.barrier()
            metrics["eval_s"] = time.time() - t0
        log.log(metrics)
        bar.set_postfix(reward=f"{metrics['reward']:.3f}", acc=f"{metrics['accuracy']:.3f}",
                        len=f"{metrics['completion_len_mean']:.0f}", kept=metrics["groups_kept"])
        if (step + 1) % args.save_every == 0 or step + 1 == args.steps:
            save(step + 1)
    bar.close()
    if start_step >= args.steps:
        print0(f"nothing to do: {out} is already at step {start_step} of {args.steps}")
    elif log.history:
        last = log.history[-1]
        print0(f"saved {out}; reward {last['reward']:.3f}, accuracy {last['accuracy']:.3f}"
               + (f", eval accuracy {last['eval_accuracy']:.3f}" if "eval_accuracy" in last else ""))
    close_distributed()
    return log.history[-1] if log.history else {}


if __name__ == "__main__":
    run_main(main)
