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

Other stages call `evaluate_task(model, tokenizer, problems, ...)` for a quick accuracy check.
"""
import argparse
import collections
import json
import math
import os
import random
import resource
import time

import torch
from tqdm import tqdm

from data.answers import find_answer, is_correct, to_number
from data.prepare import DATA_DIR, load_jsonl
from model import generate, load_checkpoint, parse_window

INSTRUCTION = ("Solve the problem step by step. Write the final answer at the end, after \"####\" "
               "(for example \"#### 42\") or inside \\boxed{}.")
# benchmarks without a training split borrow few-shot examples from a similar one
FEW_SHOT_SOURCE = {"math500": "math", "svamp": "gsm8k", "asdiv": "gsm8k"}


def pass_at_k(n, c, k):
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def answer_key(answer):
    """Answers that are the same number vote together ("1,200" and "1200.0")."""
    try:
        number = to_number(answer)
    except Exception:  # noqa: BLE001 -- a vote key must never crash an evaluation
        number = None
    return str(number) if number is not None else " ".join(answer.split())


def build_prompt(tokenizer, question, shots=()):
    messages = []
    for shot in shots:
        messages.append({"role": "user", "content": f"{shot['question']}\n\n{INSTRUCTION}"})
        messages.append({"role": "assistant", "content": shot["solution"]})
    messages.append({"role": "user", "content": f"{question}\n\n{INSTRUCTION}"})
    return tokenizer.encode_chat(messages, add_generation_prompt=True)[0]


def read_results(path):
    """Records of an earlier (possibly interrupted) run. A partial last line from a crash is dropped."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if text and not text.endswith("\n"):
        text = text[:text.rfind("\n") + 1]
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    return load_jsonl(path, fields=("id", "settings", "correct", "majority_correct", "completion_tokens", "finished"))


def score(records, samples):
    """Aggregate per-problem records into task metrics."""
    if not records:
        return {"n_problems": 0, "accuracy": None}
    correct = [r["correct"] for r in records]
    metrics = {"n_problems": len(records),
               "accuracy": sum(sum(c) / len(c) for c in correct) / len(records)}  # greedy acc, or mean pass@1
    if samples > 1:
        ks = sorted({2 ** i for i in range(int(math.log2(samples)) + 1)} | {samples})
        for k in ks:
            metrics[f"pass@{k}"] = sum(pass_at_k(len(c), sum(c), k) for c in correct) / len(records)
        metrics[f"maj@{samples}"] = sum(r["majority_correct"] for r in records) / len(records)
    lengths = [t for r in records for t in r["completion_tokens"]]
    metrics["mean_completion_tokens"] = sum(lengths) / len(lengths)
    finished = [f for r in records for f in r["finished"]]
    metrics["truncated"] = 1 - sum(finished) / len(finished)  # completions that hit max_new_tokens
    return metrics


@torch.inference_mode()
def evaluate_task(model, tokenizer, problems, max_new_tokens=512, batch_size=16, samples=1, temperature=0.0,
                  shots=(), out_path=None, seed=0, progress=True, desc="eval"):
    """Generate answers for `problems` ({id, question, answer} dicts) and score them.

    samples > 1 draws that many completions per problem (use temperature > 0) and adds pass@k and maj@n.
    With out_path, per-problem records are appended to that JSONL and problems already there are skipped.
    Returns a metrics dict: accuracy, n_problems, mean_completion_tokens, generated_tokens, tokens_per_s, ...
    """
    settings = {"samples": samples, "temperature": temperature, "few_shot": len(shots),
                "max_new_tokens": max_new_tokens, "window": model.config.window, "sinks": model.config.sinks}
    done = {}
    if out_path is not None:
        for r in read_results(out_path):
            if r["settings"] != settings:
                raise SystemExit(f"error: {out_path} holds results made with settings {r['settings']}, "
                                 f"not {settings}; use another --out-dir")
            done[r["id"]] = r
        os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    todo = [p for p in problems if p["id"] not in done]
    prompts = {p["id"]: build_prompt(tokenizer, p["question"], shots) for p in todo}
    todo.sort(key=lambda p: len(prompts[p["id"]]))  # similar lengths in a batch waste less left padding

    was_training = model.training
    model.eval()
    device = model.embed_tokens.weight.device
    generator = torch.Generator(device).manual_seed(seed) if temperature > 0 else None
    stops = set(tokenizer.stop_tokens)
    per_batch = max(1, batch_size // samples)  # a batch holds whole problems, each repeated `samples` times
    generated, gen_seconds = 0, 0.0
    out = open(out_path, "a", encoding="utf-8") if out_path is not None else None
    bar = tqdm(total=len(todo), desc=desc, disable=not progress, leave=False)
    try:
        for start in range(0, len(todo), per_batch):
            batch = todo[start:start + per_batch]
            rows = [prompts[p["id"]] for p in batch for _ in range(samples)]
            t0 = time.time()
            tokens, _ = generate(model, rows, max_new_tokens, temperature=temperature,
                                 stop_tokens=tokenizer.stop_tokens, generator=generator)
            if device.type == "cuda":
                torch.cuda.synchronize()
            gen_seconds += time.time() - t0
            generated += sum(len(t) for t in tokens)
            lines = []
            for i, p in enumerate(batch):
                outs = tokens[i * samples:(i + 1) * samples]
                finished = [bool(t) and t[-1] in stops for t in outs]
                completions = [tokenizer.decode(t[:-1] if f else t) for t, f in zip(outs, finished)]
                answers = [find_answer(c)[0] for c in completions]
                correct = [is_correct(c, p["answer"]) for c in completions]
                votes = collections.Counter(answer_key(a) for a in answers if a is not None)
                majority = votes.most_common(1)[0][0] if votes else None
                record = {"id": p["id"], "prompt": tokenizer.decode(prompts[p["id"]]), "reference": p["answer"],
                          "completions": completions, "answers": answers, "correct": correct,
                          "majority_correct": any(ok for a, ok in zip(answers, correct)
                                                  if a is not None and answer_key(a) == majority),
                          "completion_tokens": [len(t) for t in outs], "finished": finished, "settings": settings}
                done[p["id"]] = record
                lines.append(json.dumps(record, ensure_ascii=False) + "\n")
            if out is not None:
                out.write("".join(lines))
                out.flush()
            bar.update(len(batch))
    finally:  # results so far are on disk; the caller's model goes back to the mode it was in
        bar.close()
        if out is not None:
            out.close()
        model.train(was_training)

    metrics = score([done[p["id"]] for p in problems if p["id"] in done], samples)
    metrics["generated_tokens"] = generated
    metrics["tokens_per_s"] = generated / gen_seconds if gen_seconds > 0 else None
    return metrics


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
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {mean_len} | {speed} | {res['peak_memory_gb']:.2f} |")
    return "\n".join(lines) + "\n"


def write_atomic(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def load_task(data_dir, task, split):
    path = os.path.join(data_dir, task, f"{split}.jsonl")
    if not os.path.exists(path):
        make = "python -m data.synthetic" if task == "synthetic" else "python -m data.prepare"
        raise SystemExit(f"error: {path} not found (run `{make}` first)")
    return load_jsonl(path)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", action="append", required=True, help="checkpoint directory; repeat for several")
    parser.add_argument("--tasks", default="gsm8k,math500,svamp,asdiv",
                        help="comma-separated tasks: gsm8k, math500, svamp, asdiv, synthetic")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N problems of each task")
    parser.add_argument("--samples", type=int, default=1, help="completions per problem (pass@k and maj@n when > 1)")
    parser.add_argument("--temperature", type=float, default=0.0, help="sampling temperature; 0 is greedy")
    parser.add_argument("--few-shot", type=int, default=0, help="solved training problems shown as earlier chat turns")
    parser.add_argument("--batch-size", type=int, default=16, help="sequences generated together")
    parser.add_argument("--max-new-tokens", type=int, default=512, help="generation length limit per completion")
    parser.add_argument("--window", default=None, help="override the attention window: an integer or 'none' (full)")
    parser.add_argument("--sinks", type=int, default=None, help="override the number of attention sink tokens")
    parser.add_argument("--data-dir", default=DATA_DIR, help="directory holding <task>/{train,test}.jsonl")
    parser.add_argument("--out-dir", default="eval", help="where per-problem results and summaries are written")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda or cpu")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="weights dtype (default: bfloat16 on cuda, float32 on cpu)")
    parser.add_argument("--seed", type=int, default=0, help="sampling and few-shot selection seed")
    args = parser.parse_args()

    if args.samples < 1 or args.batch_size < 1 or args.max_new_tokens < 1 or args.few_shot < 0:
        raise SystemExit("error: --samples, --batch-size and --max-new-tokens must be >= 1, --few-shot >= 0")
    if args.samples > 1 and args.temperature <= 0:
        raise SystemExit("error: --samples > 1 needs --temperature > 0 (greedy samples would all be equal)")
    try:  # used only when the flag is given: "none" -> None, full attention
        window = None if args.window is None else parse_window(args.window)
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    tasks = [t for t in args.tasks.split(",") if t]
    problems = {t: load_task(args.data_dir, t, "test")[:args.limit] for t in tasks}
    shots = {}
    for t in tasks:
        if args.few_shot:
            pool = load_task(args.data_dir, FEW_SHOT_SOURCE.get(t, t), "train")
            shots[t] = random.Random(args.seed).sample(pool, min(args.few_shot, len(pool)))
    dtype = getattr(torch, args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32"))

    os.makedirs(args.out_dir, exist_ok=True)
    summary_path = os.path.join(args.out_dir, "summary.json")
    summary = {}
    if os.path.exists(summary_path):
        with open(summary_path) as f:
            summary = json.load(f)
    for ckpt in args.ckpt:
        try:
            model, tokenizer, meta = load_checkpoint(ckpt, device=args.device, dtype=dtype)
        except ValueError as e:
            raise SystemExit(f"error: {e}")
        label = os.path.basename(os.path.normpath(ckpt))
        if args.window is not None or args.sinks is not None:
            model.set_window(model.config.window if args.window is None else window, args.sinks)
            label += f"-window{model.config.window}-sinks{model.config.sinks}"
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        results, generated, seconds = {}, 0, 0.0
        for t in tasks:
            m = evaluate_task(model, tokenizer, problems[t], args.max_new_tokens, args.batch_size, args.samples,
                              args.temperature, shots.get(t, ()), os.path.join(args.out_dir, label, f"{t}.jsonl"),
                              args.seed, desc=f"{label} {t}")
            results[t] = m
            if m["tokens_per_s"]:
                generated += m["generated_tokens"]
                seconds += m["generated_tokens"] / m["tokens_per_s"]
            print(f"{label} {t}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                               for k, v in m.items()))
        entry = summary.setdefault(label, {"tasks": {}})
        entry["tasks"].update(results)
        entry.update({"ckpt": ckpt, "stage": meta.get("stage"), "peak_memory_gb": peak_memory_gb(args.device),
                      "tokens_per_s": generated / seconds if seconds else entry.get("tokens_per_s")})
        del model
    write_atomic(summary_path, json.dumps(summary, indent=1) + "\n")
    table = markdown_table(summary)
    write_atomic(os.path.join(args.out_dir, "summary.md"), table)
    print(table)


if __name__ == "__main__":
    main()
