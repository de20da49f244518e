"""
Summarise one run.sh preset: runs/<preset>/REPORT.md from the runs' own JSON, nothing typed in.

    python report.py runs/tiny          # written by `bash run.sh tiny` as its last step

Reads
    <run>/eval/summary.json          evaluate.py's metrics per checkpoint label and task
    <run>/<arm>-rl/metrics.jsonl     rl.py's per-step log (reward), for arm in sa, swa
    <run>/<ckpt>/config.json         the attention window each checkpoint was evaluated under
Writes
    <run>/REPORT.md                  table (attention x stage: accuracy per task, mean completion length,
                                     generation tokens/s, peak memory), the gap recovered by RL, the plot
    <run>/rl_reward.png              reward over RL steps, when matplotlib is importable (otherwise a note)

Gap recovered by RL = (SWA-RL - SWA-SFT) / (SA-SFT - SWA-SFT), per task, on accuracy; "undefined" when the
denominator is ~0 (SFT left no gap to recover).

Test: python -m pytest -q tests/test_report.py
"""

import argparse
import json
import os

ARMS = {"sa": "SA (full)", "swa": "SWA"}
STAGES = [("pretrained", "before SFT"), ("sft", "SFT"), ("rl", "SFT + RL")]
EPS = 1e-9


def load_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def load_jsonl(path):
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def checkpoint_window(run_dir, ckpt):
    """The window a checkpoint was trained/evaluated under (its config.json), or None when unknown/full."""
    path = os.path.join(run_dir, ckpt, "config.json")
    return load_json(path).get("window") if os.path.exists(path) else None


def find_rows(summary, run_dir):
    """(arm, stage label, summary entry) for every evaluation that belongs in the table, in table order.
    Labels follow evaluate.py: the checkpoint directory name, plus -window<W>-sinks<S> for a window override."""
    rows = []
    for arm in ARMS:
        for stage, stage_name in STAGES:
            if stage == "pretrained":
                # the model before SFT, evaluated with the window overridden: full for SA, any integer for SWA
                for label, entry in summary.items():
                    if label.startswith("pretrained-window"):
                        full = label.startswith("pretrained-windowNone")
                        if full == (arm == "sa"):
                            rows.append((arm, stage_name, label, entry))
            elif f"{arm}-{stage}" in summary:
                rows.append((arm, stage_name, f"{arm}-{stage}", summary[f"{arm}-{stage}"]))
    return rows


def window_text(run_dir, label):
    if "-window" in label:
        w = label.split("-window", 1)[1].split("-sinks", 1)[0]
        return "full" if w == "None" else w
    w = checkpoint_window(run_dir, label)
    return "full" if w is None else str(w)


def accuracy(summary, label, task):
    m = summary.get(label, {}).get("tasks", {}).get(task)
    return None if m is None else m.get("accuracy")


def gap_recovered(sa_sft, swa_sft, swa_rl):
    """(SWA-RL - SWA-SFT) / (SA-SFT - SWA-SFT), or None when undefined (missing value or denominator ~0)."""
    if None in (sa_sft, swa_sft, swa_rl):
        return None
    denominator = sa_sft - swa_sft
    if abs(denominator) < EPS:
        return None
    return (swa_rl - swa_sft) / denominator


def fmt(value, spec):
    return "-" if value is None else format(value, spec)


def table(summary, run_dir):
    rows = find_rows(summary, run_dir)
    tasks = sorted({t for _, _, _, e in rows for t in e["tasks"]})
    lines = ["| attention | window | stage | checkpoint | " + " | ".join(f"{t} accuracy (%)" for t in tasks)
             + " | mean completion tokens | generation tokens/s | peak memory (GB) |",
             "|---" * (len(tasks) + 7) + "|"]
    for arm, stage_name, label, e in rows:
        accs = [fmt(None if accuracy(summary, label, t) is None else 100 * accuracy(summary, label, t), ".1f")
                for t in tasks]
        lengths = [m["mean_completion_tokens"] for m in e["tasks"].values() if m.get("mean_completion_tokens")]
        mean_len = sum(lengths) / len(lengths) if lengths else None
        lines.append(f"| {ARMS[arm]} | {window_text(run_dir, label)} | {stage_name} | {label} | " + " | ".join(accs)
                     + f" | {fmt(mean_len, '.1f')} | {fmt(e.get('tokens_per_s'), '.0f')}"
                     + f" | {fmt(e.get('peak_memory_gb'), '.2f')} |")
    return "\n".join(lines) + "\n", tasks


def gap_lines(summary, tasks):
    lines = []
    for t in tasks:
        sa_sft, swa_sft, swa_rl = (accuracy(summary, label, t) for label in ("sa-sft", "swa-sft", "swa-rl"))
        g = gap_recovered(sa_sft, swa_sft, swa_rl)
        values = ", ".join(f"{name} {fmt(v, '.4f')}" for name, v in
                           (("SA-SFT", sa_sft), ("SWA-SFT", swa_sft), ("SWA-RL", swa_rl)))
        note = ("; SWA-SFT is not behind SA-SFT, so there is no gap to recover and the ratio means little"
                if g is not None and sa_sft < swa_sft else "")
        lines.append(f"- {t}: {'undefined' if g is None else f'{g:.3f}'} ({values}{note})")
    return lines


def rl_curves(run_dir):
    return {arm: [(m["step"], m["reward"]) for m in load_jsonl(os.path.join(run_dir, f"{arm}-rl", "metrics.jsonl"))
                  if "reward" in m and "step" in m] for arm in ARMS}


def plot(curves, path):
    """Reward over RL steps; returns a note for the report (the image link, or why there is none)."""
    if not any(curves.values()):
        return "No RL metrics found, no plot."
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no reward plot (the per-step rewards are in <arm>-rl/metrics.jsonl)."
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for arm, points in curves.items():
        if points:
            ax.plot(*zip(*points), marker="o", label=ARMS[arm])
    ax.set_xlabel("RL step")
    ax.set_ylabel("mean reward")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return f"![reward over RL steps]({os.path.basename(path)})"


def build_report(run_dir):
    summary = load_json(os.path.join(run_dir, "eval", "summary.json"))
    text, tasks = table(summary, run_dir)
    curves = rl_curves(run_dir)
    out = [f"# Report: {os.path.basename(os.path.normpath(run_dir))}", "",
           "Accuracy, lengths, speed and memory from evaluate.py (`eval/summary.json`); peak memory is the "
           "evaluating process's peak (CPU: whole-process RSS).", "", text,
           "## Gap recovered by RL", "", "(SWA-RL - SWA-SFT) / (SA-SFT - SWA-SFT) on accuracy:", "",
           *gap_lines(summary, tasks), "", "## RL reward", ""]
    for arm, points in curves.items():
        if points:
            out.append(f"- {ARMS[arm]}: {len(points)} steps, reward first {points[0][1]:.3f}, "
                       f"last {points[-1][1]:.3f}, mean {sum(r for _, r in points) / len(points):.3f}")
    out += ["", plot(curves, os.path.join(run_dir, "rl_reward.png")), ""]
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="a preset's directory, e.g. runs/tiny")
    args = parser.parse_args(argv)
    if not os.path.exists(os.path.join(args.run_dir, "eval", "summary.json")):
        raise SystemExit(f"error: {args.run_dir}/eval/summary.json not found (run evaluate.py first)")
    report = build_report(args.run_dir)
    path = os.path.join(args.run_dir, "REPORT.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write(report)
    print(report)
    print(f"-> {path}")


if __name__ == "__main__":
    main()
