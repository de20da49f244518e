"""
The RL step's time: this tree against an earlier tree of the project, side by side in one run on one GPU.

Each tree runs its own convert.py (SmolLM2-135M-Instruct, full attention) and its own rl.py on its own GSM8K data
(`python -m data.prepare` in that tree) at the settings of the smollm2-gsm8k preset's RL stage: 64 problems x 8
completions a step, up to 384 new tokens, generation batches of 512, 32 sequences per forward/backward pass, one
optimizer update per rollout batch, dynamic sampling with up to 3 generation rounds, window 128. RL starts from the
converted model rather than an SFT model, so rewards stay low and most steps run several generation rounds, as in
that preset's runs (84-90% of groups all wrong). This tree runs as it is, with the decoding step compiled
(SWARR_DECODE_COMPILE=1), and with its training passes compiled as well (rl.py --compile), as --runs picks.

A step's time is the interval between consecutive lines of the run's metrics.jsonl as this script sees them appear
(polled every 0.2 s; the earlier tree records no time of its own), the first step (warm-up and compilation) left
out. The work of a step differs between trees: their prompts are laid out differently (which changes how soon
dynamic sampling fills its groups), and the completions are samples; the table prints the generation rounds and the
completions' mean length next to the time.

    git worktree add /tmp/swarr-before dba0bab && (cd /tmp/swarr-before && python -m data.prepare)
    python -m data.prepare
    python bench/rl_step.py --before /tmp/swarr-before --keep results/bench/rl-step   # one H200: 5-8 minutes
    python bench/rl_step.py --before /tmp/swarr-before --runs this,compiled           # this tree only
    python bench/rl_step.py --before /tmp/swarr-before --smoke    # tiny settings on the CPU, end to end
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import shutil
import tempfile
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = ("--task gsm8k --prompts-per-step 64 --group-size 8 --max-new-tokens 384 --gen-batch 512 --lr 5e-6 "
            "--warmup-steps 3 --eval-every 0 --save-every 1000 --no-progress --max-gen-rounds 3")
SMOKE = ("--task gsm8k --prompts-per-step 2 --group-size 2 --max-new-tokens 8 --gen-batch 4 --lr 5e-6 "
         "--warmup-steps 1 --eval-every 0 --save-every 1000 --no-progress --max-gen-rounds 1")

parser = argparse.ArgumentParser(description="the RL step's time, this tree against an earlier one")
parser.add_argument("--before", required=True, help="a checkout of the earlier tree, with its data/gsm8k prepared")
parser.add_argument("--steps", type=int, default=5, help="RL steps per run (the first is not timed)")
parser.add_argument("--window", default="128", help="attention window of the RL runs")
parser.add_argument("--src", default="smollm2-135m-instruct", help="convert.py --src of both trees")
parser.add_argument("--data-dir", default=None, help="rl.py --data-dir of both trees (default: each tree's data/)")
parser.add_argument("--work", default=None, help="directory for the checkpoints (default: a temporary one)")
parser.add_argument("--before-commit", default=None, help="the earlier tree's commit, for the table (default: git's)")
parser.add_argument("--runs", default="before,this,compiled",
                    help="which runs, comma-separated: before, this, compiled (this tree, decoding step compiled), "
                         "compiled-all (also rl.py --compile: the training passes' blocks compiled)")
parser.add_argument("--keep", default=None, help="copy each run's metrics.jsonl into this directory (<run>.jsonl)")
parser.add_argument("--smoke", action="store_true", help="tiny settings on the CPU")
args = parser.parse_args()


def run_tree(name, tree, work, env_extra=None, flags=()):
    """Convert (once per tree) and run RL in `tree`; returns (seconds between metrics lines, the metrics lines)."""
    env = {**os.environ, **(env_extra or {})}
    base = os.path.join(work, "before-base" if tree == args.before else "this-base")
    out = os.path.join(work, f"{name}-rl")
    if not os.path.isdir(base):
        subprocess.run([sys.executable, "convert.py", "--src", args.src, "--out", base, "--window", "none"], cwd=tree,
                       env=env, check=True, stdout=subprocess.DEVNULL)
    helptext = subprocess.run([sys.executable, "rl.py", "--help"], cwd=tree, env=env, capture_output=True,
                              text=True, check=True).stdout
    batch_flag = "--micro-batch" if "--micro-batch" in helptext else "--batch-size"  # the earlier tree's name
    device = "cpu" if args.smoke else "cuda"
    command = [sys.executable, "rl.py", "--ckpt", base, "--out", out, "--window", args.window, "--steps",
               str(args.steps), "--device", device, batch_flag, "2" if args.smoke else "32",
               *(SMOKE if args.smoke else SETTINGS).split(), *flags]
    if args.data_dir:
        command += ["--data-dir", os.path.abspath(args.data_dir)]
    if "--minibatches" in helptext:
        command += ["--minibatches", "1"]
    metrics = os.path.join(out, "metrics.jsonl")
    seen, times = 0, []
    proc = subprocess.Popen(command, cwd=tree, env=env, stdout=subprocess.DEVNULL)
    while proc.poll() is None or seen < args.steps:
        if os.path.exists(metrics):
            with open(metrics) as f:
                lines = sum(1 for _ in f)
            times += [time.perf_counter()] * (lines - seen)
            seen = lines
        if proc.poll() is not None and seen < args.steps:
            raise SystemExit(f"{name}: rl.py exited with {proc.returncode} after {seen} steps")
        time.sleep(0.2)
    with open(metrics) as f:
        lines = [json.loads(line) for line in f]
    return [b - a for a, b in zip(times, times[1:])], lines


def commit(tree):
    if tree == args.before and args.before_commit:
        return args.before_commit
    got = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tree, capture_output=True, text=True)
    return got.stdout.strip() or "?"


work = args.work or tempfile.mkdtemp(prefix="rl-step-")
RUNS = {"before": ("before", args.before, None, ()), "this": ("this", HERE, {"SWARR_DECODE_COMPILE": "0"}, ()),
        "compiled": ("this, compiled decoding", HERE, {"SWARR_DECODE_COMPILE": "1"}, ()),
        "compiled-all": ("this, compiled decoding and training", HERE, {"SWARR_DECODE_COMPILE": "1"}, ("--compile",))}
chosen = args.runs.split(",")
if set(chosen) - set(RUNS):
    parser.error(f"unknown runs {sorted(set(chosen) - set(RUNS))}; choose from {', '.join(RUNS)}")
results = []
for name in chosen:
    label, tree, env, flags = RUNS[name]
    t0 = time.perf_counter()
    intervals, lines = run_tree(name, tree, work, env, flags)
    if args.keep:
        os.makedirs(args.keep, exist_ok=True)
        shutil.copyfile(os.path.join(work, f"{name}-rl", "metrics.jsonl"), os.path.join(args.keep, f"{name}.jsonl"))
    results.append((label, tree, intervals, lines))
    print(f"{label}: {len(lines)} steps in {time.perf_counter() - t0:.0f} s (conversion included); seconds between "
          f"steps: {', '.join(f'{t:.1f}' for t in intervals)}", flush=True)

print(f"\nRL step, smollm2-gsm8k settings, window {args.window}, {args.steps - 1} timed steps per run")
print("| tree | commit | s/step (median) | s/step (each) | gen rounds | completion tokens (mean) | gen tokens/s "
      "| gen / score / logprob / train s |")
print("|---|---|---|---|---|---|---|---|")
medians = {}
for label, tree, intervals, lines in results:
    timed = lines[1:]
    medians[label] = statistics.median(intervals)
    split = " / ".join(f"{statistics.median(m[k] for m in timed):.1f}" if all(k in m for m in timed) else "-"
                       for k in ("gen_s", "score_s", "logprob_s", "train_s"))
    print(f"| {label} | {commit(tree)} | {medians[label]:.2f} | {', '.join(f'{t:.1f}' for t in intervals)} "
          f"| {statistics.mean(m['gen_rounds'] for m in timed):.1f} "
          f"| {statistics.mean(m['completion_len_mean'] for m in timed):.0f} "
          f"| {statistics.median(m['gen_tok_s'] for m in timed):,.0f} | {split} |")
for label in medians:  # steps shorter than the polling interval (a smoke run) show as 0 s and get no ratio
    if label != "before" and medians.get("before") and medians[label]:
        print(f"{label}: {medians['before'] / medians[label]:.2f}x faster than before (median step)")
