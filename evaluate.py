"""
Evaluate checkpoints on math benchmarks: accuracy, pass@k, majority vote, speed and memory.

Each problem is asked zero-shot through the model's chat template (or with k solved training problems as
earlier chat turns), answered by batched KV-cache generation, and scored by data.answers.is_correct.

    python evaluate.py --ckpt ckpt/base --ckpt ckpt/swa512 --tasks gsm8k,math500 --limit 200
    python evaluate.py --ckpt ckpt/rl --tasks gsm8k --samples 8 --temperature 0.7      # pass@k and maj@8
    python evaluate.py --ckpt ckpt/full --tasks synthetic --window 64 --sinks 4        # under another window
    python evaluate.py --ckpt ckpt/base --tasks gsm8k --few-shot 4

Tasks read data/<task>/test.jsonl (made by `python -m data.prepare` and `python -m data.synthetic`).
Outputs, under --out-dir (default eval/):
    <label>/<task>.jsonl   one line per problem: prompt, completions, extracted answers, correct flags
    summary.json           metrics per checkpoint label and task (merged across invocations)
    summary.md             the same as a markdown table, one row per checkpoint
An interrupted run resumes: problems already in <label>/<task>.jsonl are skipped (results are appended and
flushed after every batch). The label is the checkpoint directory name, plus the window override if any.
Every record and summary entry also holds the checkpoint's absolute path and common.weights_id, a hash of what
the model is made of: records of other weights under the same label (another checkpoint of the same name, or
this one retrained) are refused, never mixed in.

Other stages call `evaluate_task(model, tokenizer, problems, ...)` for a quick accuracy check.
"""
import argparse
import fcntl
import json
import math
import os
import random
import resource

import torch

from common import (DATA_DIR, FEW_SHOT_SOURCE, add_window_args, apply_window, check_results, check_window_args,
                    eval_label, eval_settings, evaluate_task, fail, load_task, parse_window, read_summary, run_main,
                    weights_id, write_text)
from data import trace
from model import load_checkpoint, load_config


def peak_memory_gb(device):
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 1024**3
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux reports KiB; whole-process peak


def markdown_table(summary):
    tasks = sorted({t for res in summary.values() for t in res["tasks"]})
    lines = ["| checkpoint | " + " | ".join(tasks) + " | mean tokens | tokens/s | peak mem (GB) |",
             "|---" * (len(tasks) + 4) + "|"]
    for label, res in summary.items():
        cells = []
        for t in tasks:
            m = res["tasks"].get(t)
            if m is None or m["accuracy"] is None:
                cells.append("-")
                continue
            cell = f"{100 * m['accuracy']:.1f}"
            extra = [f"{k} {100 * v:.1f}" for k, v in m.items() if k.startswith("maj@")]
            extra += [f"{k} {100 * v:.1f}" for k, v in m.items() if k.startswith("pass@") and k != "pass@1"][-1:]
            cells.append(cell + (f" ({', '.join(extra)})" if extra else ""))
        lengths = [m["mean_completion_tokens"] for m in res["tasks"].values() if m.get("mean_completion_tokens")]
        mean_len = f"{sum(lengths) / len(lengths):.0f}" if lengths else "-"
        speed = f"{res['tokens_per_s']:.0f}" if res.get("tokens_per_s") else "-"
        memory = f"{res['peak_memory_gb']:.2f}" if res.get("peak_memory_gb") is not None else "-"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {mean_len} | {speed} | {memory} |")
    return "\n".join(lines) + "\n"


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = parser.add_argument_group("what to evaluate")
    g.add_argument("--ckpt", action="append", required=True, help="checkpoint directory; repeat for several")
    g.add_argument("--tasks", default="gsm8k,math500,svamp,asdiv",
                   help="comma-separated tasks: gsm8k, math500, svamp, asdiv, synthetic, trace (and trace-*: records "
                        "how each completion uses the window)")
    g.add_argument("--limit", type=int, default=None, help="evaluate only the first N problems of each task")
    g.add_argument("--split", default="test", choices=("test", "train"),
                   help="which problems: train is for picking RL problems (rl.py --solvable-from); its results are "
                        "kept as <task>-train")
    g.add_argument("--data-dir", default=DATA_DIR, help="directory holding <task>/{train,test}.jsonl")
    g.add_argument("--out-dir", default="eval", help="where per-problem results and summaries are written")
    add_window_args(g)
    g = parser.add_argument_group("how to answer")
    g.add_argument("--samples", type=int, default=1, help="completions per problem (pass@k and maj@n when > 1)")
    g.add_argument("--temperature", type=float, default=0.0, help="sampling temperature; 0 is greedy")
    g.add_argument("--few-shot", type=int, default=0, help="solved training problems shown as earlier chat turns")
    g.add_argument("--max-new-tokens", type=int, default=512, help="generation length limit per completion")
    g.add_argument("--batch-size", type=int, default=16, help="sequences generated together")
    g.add_argument("--seed", type=int, default=0, help="sampling and few-shot selection seed")
    g = parser.add_argument_group("device")
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda or cpu")
    g.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="weights dtype (default: bfloat16 on cuda, float32 on cpu)")
    args = parser.parse_args(argv)
    check_window_args(args)
    if args.samples < 1 or args.batch_size < 1 or args.max_new_tokens < 1 or args.few_shot < 0:
        fail("--samples, --batch-size and --max-new-tokens must be >= 1, --few-shot >= 0")
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        fail(f"--temperature must be >= 0 (0 is greedy), got {args.temperature}")
    if args.samples > 1 and args.temperature <= 0:
        fail("--samples > 1 needs --temperature > 0 (greedy samples would all be equal)")
    if args.limit is not None and args.limit < 1:
        fail(f"--limit must be >= 1, got {args.limit}")
    args.tasks = [t for t in args.tasks.split(",") if t]
    if not args.tasks:
        fail("--tasks names no task")
    if len(set(args.tasks)) < len(args.tasks):
        fail(f"--tasks names a task twice: {','.join(args.tasks)}")
    if args.split == "train" and args.few_shot:
        fail("--few-shot draws its examples from the train split: not with --split train")
    return args


def result_name(task, split):
    """The name a task's results are kept under: the task for its test split, <task>-train for the train split."""
    return task if split == "test" else f"{task}-{split}"


def plan(args, summary, summary_path, shots):
    """[(ckpt, label, weights id)], checked before any generation. Records are kept under a label, so one label must
    never hold the records of two different models: not two --ckpt of the same name, not a retrained checkpoint."""
    overridden = args.window is not None or args.sinks is not None
    runs, by_label = [], {}
    for ckpt in args.ckpt:
        config = load_config(ckpt)
        if overridden:
            config.window = config.window if args.window is None else parse_window(args.window)
            config.sinks = config.sinks if args.sinks is None else args.sinks
        label = eval_label(ckpt, config if overridden else None)
        if label in by_label:
            fail(f"--ckpt {by_label[label]} and --ckpt {ckpt} both get the label {label!r}, under which results "
                 "are kept; evaluate them into different --out-dir")
        by_label[label] = ckpt
        weights = weights_id(ckpt)
        if label in summary and summary[label].get("weights") != weights:
            fail(f"{summary_path} holds results of {label!r} made by other weights (id "
                 f"{summary[label].get('weights') or 'not recorded'}, from {summary[label].get('ckpt')}), not "
                 f"{ckpt}'s ({weights}): a retrained checkpoint, or another one of the same name; use another "
                 "--out-dir")
        for t in args.tasks:
            check_results(os.path.join(args.out_dir, label, f"{result_name(t, args.split)}.jsonl"),
                          eval_settings(config, args.samples, args.temperature, len(shots.get(t, ())),
                                        args.max_new_tokens, weights))
        runs.append((ckpt, label, weights))
    return runs


def main(argv=None):
    args = parse_args(argv)
    problems = {t: load_task(args.data_dir, t, args.split)[:args.limit] for t in args.tasks}
    shots = {}
    for t in args.tasks:
        if args.few_shot:
            source = FEW_SHOT_SOURCE.get(t, t)
            pool = load_task(args.data_dir, source, "train")
            if any("solution" not in p for p in pool):
                fail(f"{os.path.join(args.data_dir, source, 'train.jsonl')}: --few-shot needs a \"solution\" in "
                     "every problem")
            shots[t] = random.Random(args.seed).sample(pool, min(args.few_shot, len(pool)))
    dtype = getattr(torch, args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32"))
    summary_path = os.path.join(args.out_dir, "summary.json")
    summary = read_summary(summary_path) if os.path.exists(summary_path) else {}
    runs = plan(args, summary, summary_path, shots)

    os.makedirs(args.out_dir, exist_ok=True)
    for ckpt, label, weights in runs:
        model, tokenizer, meta = load_checkpoint(ckpt, device=args.device, dtype=dtype)
        apply_window(model, args)
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        results, generated, seconds = {}, 0, 0.0
        for t in args.tasks:
            name = result_name(t, args.split)
            m = evaluate_task(model, tokenizer, problems[t], args.max_new_tokens, args.batch_size, args.samples,
                              args.temperature, shots.get(t, ()), os.path.join(args.out_dir, label, f"{name}.jsonl"),
                              args.seed, desc=f"{label} {name}",
                              trajectory=trace.trajectory if trace.is_trace_task(t) else None,
                              ckpt=os.path.abspath(ckpt), weights=weights)
            results[name] = m
            if m["tokens_per_s"]:
                generated += m["generated_tokens"]
                seconds += m["generated_tokens"] / m["tokens_per_s"]
            print(f"{label} {name}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                               for k, v in m.items()))
        del model
        # Written after every checkpoint, so that a later one that fails to load loses none of this one's results;
        # merged into the file as it is now, under a lock, since another evaluation into the same --out-dir (two
        # run.sh side by side) may have written its own entries since this one started.
        with open(summary_path + ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            summary = read_summary(summary_path) if os.path.exists(summary_path) else {}
            entry = summary.setdefault(label, {"tasks": {}})
            entry["tasks"].update(results)
            entry.update({"ckpt": os.path.abspath(ckpt), "weights": weights, "stage": meta.get("stage"),
                          "peak_memory_gb": peak_memory_gb(args.device),
                          "tokens_per_s": generated / seconds if seconds else entry.get("tokens_per_s")})
            write_text(summary_path, json.dumps(summary, indent=1) + "\n")
            write_text(os.path.join(args.out_dir, "summary.md"), markdown_table(summary))
    print(markdown_table(summary))


if __name__ == "__main__":
    run_main(main)
