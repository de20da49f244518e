"""
How far back a model recalls a value: per-copy accuracy against copy distance on the trace task, teacher-forced.

A window-W model cannot attend a value more than W - 1 tokens back, but it can still reach it through its layers
(a value can hop from position to position, up to L x (W - 1) tokens in L layers). Whether it learns to is what
this measures. Each test problem's reference solution is fed as it is (teacher forcing); at every copy in it (a
step's operand, a restated value, a term of the sum: data/trace.py) the model's most likely next token is
compared with the value the copy needs. Copies are grouped by their distance (from the query that predicts the
copy to the value it copies), so one run shows accuracy from short distances to well past the window. Filler
lengths vary across the test set (data.trace --filler with several values), which spreads the distances.

    python -m data.trace --n-train 0 --n-test 600 --filler 0,8,16,24,32,40 --test-style full \\
        --tokenizer runs/trace/base --out-dir runs/trace/data/trace-sweep
    python analysis/recall.py --ckpt runs/trace/swa64-sft --ckpt runs/trace/sa-sft \\
        --data runs/trace/data/trace-sweep/test.jsonl --out runs/trace/recall.json
    python analysis/recall.py --ckpt runs/trace/sa-sft --window 64 --sinks 4 ...   # under another window

Writes --out: {label: {"window": W, "sinks": S, "bins": [{"lo", "hi", "copies", "correct"}], "bins_nearest": [...],
"by_kind": {...}}}; bins by the distance to the value's last write, bins_nearest by the distance to its nearest
earlier write or copy (with 3 registers a full-style step's first operand was copied one line earlier),
merged into the file if it exists (labels as evaluate.py's), and prints a table. analysis/report.py shows it.
"""
import argparse
import json
import os
import sys

import torch

# run as a script from analysis/, the repository's modules are one directory up
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import (add_window_args, apply_window, build_prompt, check_window_args, eval_label, fail,  # noqa: E402
                    read_jsonl, run_main, write_text)
from data.trace import trace_stats  # noqa: E402
from model import load_checkpoint  # noqa: E402


@torch.inference_mode()
def copy_verdicts(model, tokenizer, rows, batch_size):
    """[(distance, nearest, kind, correct)] for every copy in every row's reference solution, teacher-forced
    (distance: back to the value's last write; nearest: back to its nearest earlier write or copy; data/trace.py).
    kind: "restatement", or "operand" for a step's operands and the sum's terms."""
    device = model.embed_tokens.weight.device
    verdicts = []
    for s in range(0, len(rows), batch_size):
        seqs, copies = [], []
        for row in rows[s:s + batch_size]:
            prompt, completion = build_prompt(tokenizer, row), tokenizer.encode(row["solution"])
            seqs.append(prompt + completion)
            copies.append(trace_stats(prompt, completion, tokenizer)["copies"])
        longest = max(len(x) for x in seqs)
        idx = torch.zeros(len(seqs), longest, dtype=torch.long)
        doc_ids = torch.full((len(seqs), longest), -1, dtype=torch.long)  # right padding, attended by nothing
        for i, x in enumerate(seqs):
            idx[i, :len(x)], doc_ids[i, :len(x)] = torch.tensor(x), 0
        predicted = model(idx.to(device), doc_ids=doc_ids.to(device)).argmax(-1).cpu()
        for i, row_copies in enumerate(copies):
            for c in row_copies:  # the query at position c - 1 predicts the copy's first token at c
                verdicts.append((c["distance"], c["nearest"], "restatement" if c["restatement"] else "operand",
                                 bool(predicted[i, c["position"] - 1] == seqs[i][c["position"]])))
    return verdicts


def binned(pairs, width):
    """[(distance, correct)] -> bins of `width` tokens: [{lo, hi, copies, correct}] in order."""
    bins = {}
    for distance, ok in pairs:
        lo = distance // width * width
        b = bins.setdefault(lo, {"lo": lo, "hi": lo + width - 1, "copies": 0, "correct": 0})
        b["copies"] += 1
        b["correct"] += ok
    return [bins[lo] for lo in sorted(bins)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", action="append", required=True, help="checkpoint directory; repeat for several")
    parser.add_argument("--data", required=True, help="trace-task JSONL whose reference solutions are fed")
    parser.add_argument("--out", required=True, help="JSON file the results are merged into")
    parser.add_argument("--bin", type=int, default=16, help="width of a distance bin in tokens")
    parser.add_argument("--batch-size", type=int, default=64, help="sequences per forward pass")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda or cpu")
    add_window_args(parser)
    args = parser.parse_args(argv)
    check_window_args(args)
    if args.bin < 1 or args.batch_size < 1:
        fail("--bin and --batch-size must be >= 1")
    rows = read_jsonl(args.data, {"question": str, "solution": str})
    if not rows:
        fail(f"{args.data} has no problems")
    results = {}
    if os.path.exists(args.out):
        with open(args.out, encoding="utf-8") as f:
            results = json.load(f)
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    for ckpt in args.ckpt:
        model, tokenizer, _ = load_checkpoint(ckpt, device=args.device, dtype=dtype)
        apply_window(model, args)
        label = eval_label(ckpt, model.config if args.window is not None or args.sinks is not None else None)
        verdicts = copy_verdicts(model.eval(), tokenizer, rows, args.batch_size)
        kinds = {kind: {"copies": sum(k == kind for _, _, k, _ in verdicts),
                        "correct": sum(ok for _, _, k, ok in verdicts if k == kind)}
                 for kind in ("operand", "restatement")}
        results[label] = {"window": model.config.window, "sinks": model.config.sinks, "data": args.data,
                          "bins": binned([(d, ok) for d, _, _, ok in verdicts], args.bin),
                          "bins_nearest": binned([(n, ok) for _, n, _, ok in verdicts], args.bin), "by_kind": kinds}
        cells = ", ".join(f"{b['lo']}-{b['hi']}: {100 * b['correct'] / b['copies']:.1f}% of {b['copies']}"
                          for b in results[label]["bins"])
        print(f"{label} (window {model.config.window}): {cells}")
        del model
    write_text(args.out, json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    run_main(main)
