"""
Summarise one run.sh preset: runs/<preset>/REPORT.md and its plots, written from the runs' own JSON.

    python analysis/report.py runs/tiny          # run.sh's last step, from the repository root

Reads the layout run.sh writes:
    <run>/base/                       the full-attention starting checkpoint (its tokenizer counts tokens)
    <run>/sa-{sft,rl}/                the full-attention (SA) arm; config.json holds the window (null)
    <run>/swa<W>-{sft,rl}/            one sliding-window (SWA) arm per window W; rl dirs hold metrics.jsonl
    <run>/eval/summary.json           evaluate.py's metrics per label and task
    <run>/eval/<label>/<task>.jsonl   evaluate.py's per-problem records (prompt, completions, correct, ...)
    <run>/data/synthetic/test.jsonl   the synthetic test set, when there is one (its gaps)
A label is a checkpoint directory name, plus -window<W>-sinks<S> when evaluate.py overrode the window:
base-windowNone-sinks0 is the unconverted model, base-window64-sinks0 the converted one before any training.

Writes, next to the runs:
    REPORT.md                a table (attention x stage: accuracy per task, mean completion length, generation
                             tokens/s, peak memory), synthetic accuracy per gap, the gap recovered by RL, RL
                             curves, trajectory analysis
    rl_reward.png            mean reward per RL step, one line per arm
    rl_accuracy.png          held-out accuracy over RL steps (training accuracy when rl.py logged none)
    rl_length.png            mean completion length per RL step
    accuracy_vs_window.png   accuracy on the main task against the window each model was evaluated under
A PNG is written only when there is data for it. The plots need matplotlib, the tables do not: without it
REPORT.md is written without its plots, and one line says so.

Definitions (also stated in the report):
    standard error       sqrt(p (1 - p) / n) over a task's n problems (binomial; each row is one run)
    gap recovered by RL  (SWA-RL - SWA-SFT) / (SA-SFT - SWA-SFT), per window and task, on accuracy;
                         "undefined" when the denominator is ~0 (SFT left no gap to recover)
    RL gain, paired      SWA-RL - SWA-SFT on the same problems, with a paired standard error (paired_gain)
    trajectory metrics   see trajectory_stats()

Test: python -m pytest -q tests/test_report.py
"""

import argparse
import bisect
import collections
import math
import os
import re
import sys

import numpy as np

# run as a script from analysis/, the repository's modules are one directory up
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import (ARM_RE, INSTRUCTION, LABEL_RE, fail, read_json, read_jsonl, read_records,  # noqa: E402
                    read_summary, run_main, write_text)
from data import trace  # noqa: E402
from tokenizer import CHATML, Tokenizer  # noqa: E402

EPS = 1e-9
STAGES = {"base": "before SFT", "sft": "SFT", "rl": "SFT + RL"}
MATH_TASKS = ("gsm8k", "svamp", "asdiv", "math500")  # the trajectory analysis reads the first one evaluated
NUMBER_RE = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?")  # 7, 12.5, 1,200
COMPUTATION_RE = re.compile(rf"(?:{NUMBER_RE.pattern})\s*[-+*/×÷]\s*\d")  # a number, an operator, a number


def checkpoint_window(path, default):
    """(window, sinks) from a checkpoint's config.json, checked; (default, 0) without the file."""
    config = read_json(path) if os.path.exists(path) else {}
    window, sinks = config.get("window", default), config.get("sinks") or 0
    if not (window is None or _is_int(window)) or not _is_int(sinks):
        fail(f"{path}: window must be an integer or null, sinks an integer")
    return window, sinks


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def load_recall(path):
    """analysis/recall.py's results, checked: anything else is a UserError naming the file."""
    results = read_json(path)
    for label, r in results.items():
        ok = (isinstance(r, dict) and isinstance(r.get("bins"), list) and _is_int(r.get("sinks"))
              and (r.get("window") is None or _is_int(r["window"]))
              and isinstance(r.get("bins_nearest", []), list)
              and all(isinstance(b, dict) and all(_is_int(b.get(k)) for k in ("lo", "hi", "copies", "correct"))
                      and b["copies"] > 0 and b["hi"] >= b["lo"] for b in r["bins"] + r.get("bins_nearest", [])))
        if not ok:
            fail(f"{path}: {label!r} must hold window, sinks and bins (and optionally bins_nearest) of "
                 "{lo, hi, copies, correct} integers")
    return results


# What the report reads of the runs' JSONL files, checked as it reads them (a UserError names the file and line).
METRICS_FIELDS = {"step": int}  # metrics.jsonl
PLOTTED = ("reward", "accuracy", "eval_accuracy", "completion_len_mean", "fits_window", "window_style",
           "restatements_per_step")
METRICS_OPTIONAL = {**{key: (int, float, type(None)) for key in PLOTTED}, "eval_task": str}
RECORD_TYPES = {"prompt": str, "reference": str, "completions": list, "completion_tokens": list, "trajectories": list}


def label_records(path, *needed):
    """evaluate.py's per-problem records in `path`, each with an id, its verdicts ("correct") and the fields
    `needed`, checked: anything else is a UserError naming the file and line."""
    return read_records(path, {"id": (str, int), "correct": list, **{k: RECORD_TYPES[k] for k in needed}},
                        RECORD_TYPES)


def fmt(value, spec):
    return "-" if value is None else format(value, spec)


def window_text(window):
    return "full" if window is None else str(window)


# -- what was evaluated --------------------------------------------------------------------------------------

def evaluations(summary, run_dir):
    """One dict per label in this layout, in table order: full attention first, then by window; within a window
    the base model, then the SA arm, then the SWA arm, SFT before RL. Other labels are returned apart."""
    rows, other = [], []
    for label, entry in summary.items():
        ckpt, window, sinks = LABEL_RE.match(label).groups()
        arm = ARM_RE.match(ckpt)
        if ckpt != "base" and arm is None:
            other.append(label)
            continue
        trained = "base" if arm is None else arm.group(1)  # base, sa or swa<W>
        trained_window = int(arm.group(2)) if arm and arm.group(2) else None
        if window is None:  # evaluated as saved: the checkpoint's own window
            window, sinks = checkpoint_window(os.path.join(run_dir, ckpt, "config.json"), trained_window)
        else:
            window = None if window == "None" else int(window)
        stage = "base" if arm is None else arm.group(3)
        rows.append({"label": label, "entry": entry, "trained": trained, "stage": stage, "window": window,
                     "sinks": int(sinks), "trained_window": trained_window,
                     "replicate": bool(arm and (arm.group(4) or arm.group(5)))})  # a control or another seed
    rows.sort(key=lambda r: (r["window"] is not None, r["window"] or 0, r["sinks"],
                             {"base": 0, "sa": 1}.get(r["trained"], 2),
                             r["trained_window"] or 0, list(STAGES).index(r["stage"])))
    return rows, other


def accuracy(summary, label, task):
    """(accuracy, binomial standard error) of a label on a task; (None, None) when it was not evaluated."""
    m = summary.get(label, {}).get("tasks", {}).get(task) or {}
    p, n = m.get("accuracy"), m.get("n_problems")
    return p, (binomial_se(p, n) if p is not None and n else None)


def binomial_se(p, n):
    return math.sqrt(p * (1 - p) / n)


def percent(p, se):
    return "-" if p is None else f"{100 * p:.1f}" + (f" ± {100 * se:.1f}" if se is not None else "")


def points(paired):
    """A paired difference (value, standard error, ...) in points, signed: "+1.5 ± 0.9"; "-" for None."""
    return "-" if paired is None else f"{100 * paired[0]:+.1f} ± {100 * paired[1]:.1f}"


def gap_recovered(sa_sft, swa_sft, swa_rl):
    """(SWA-RL - SWA-SFT) / (SA-SFT - SWA-SFT), or None when undefined (missing value or denominator ~0)."""
    if None in (sa_sft, swa_sft, swa_rl):
        return None
    denominator = sa_sft - swa_sft
    if abs(denominator) < EPS:
        return None
    return (swa_rl - swa_sft) / denominator


def table(summary, rows, tasks):
    lines = ["| attention | window | stage | checkpoint | " + " | ".join(f"{t} accuracy (%)" for t in tasks)
             + " | mean completion tokens | parsed (%) | truncated (%) | generation tokens/s | peak memory (GB) |",
             "|---" * (len(tasks) + 9) + "|"]
    for r in rows:
        e = r["entry"]
        stage = STAGES[r["stage"]]
        if r["stage"] != "base" and r["trained_window"] != r["window"]:
            stage += f" (trained at {window_text(r['trained_window'])})"  # e.g. the SA model run under a window

        def mean_over_tasks(key, scale=1.0):  # None when no task has it (summaries made before it was recorded)
            values = [m[key] for m in e["tasks"].values() if m.get(key) is not None]
            return scale * sum(values) / len(values) if values else None
        lines.append(f"| {'SA (full)' if r['window'] is None else 'SWA'} | {window_text(r['window'])}"
                     + (f" + {r['sinks']} sinks" if r["sinks"] else "") + f" | {stage} | {r['label']} | "
                     + " | ".join(percent(*accuracy(summary, r["label"], t)) for t in tasks)
                     + f" | {fmt(mean_over_tasks('mean_completion_tokens'), '.1f')}"
                     + f" | {fmt(mean_over_tasks('parsed', 100), '.1f')}"
                     + f" | {fmt(mean_over_tasks('truncated', 100), '.1f')}"
                     + f" | {fmt(e.get('tokens_per_s'), '.0f')} | {fmt(e.get('peak_memory_gb'), '.2f')} |")
    return lines


def shared_verdicts(run_dir, labels, task):
    """Per label, {problem id: whether the first completion was right}, kept to the problems every label
    answered; None when a label has no per-problem records or they share no problem."""
    paths = [os.path.join(run_dir, "eval", label, f"{task}.jsonl") for label in labels]
    if not all(os.path.exists(p) for p in paths):
        return None
    verdicts = [{r["id"]: r["correct"][0] for r in label_records(p)} for p in paths]
    common = set.intersection(*(set(v) for v in verdicts))
    return [{i: v[i] for i in common} for v in verdicts] if common else None


def paired_mean(diffs):
    """Mean of per-problem differences and its standard error sqrt(sum d^2 - (sum d)^2 / n) / n."""
    n, total = len(diffs), sum(diffs)
    return total / n, math.sqrt(max(sum(d * d for d in diffs) - total ** 2 / n, 0.0)) / n


def paired_gain(run_dir, before, after, task):
    """RL's gain on the problems both labels answered: (fixed - broken) / n, with the paired standard error
    sqrt(fixed + broken - (fixed - broken)^2 / n) / n, far tighter than two independent errors when most
    problems keep their verdict. Returns (gain, se, fixed, broken), or None without both sets of records."""
    shared = shared_verdicts(run_dir, (before, after), task)
    if shared is None:
        return None
    old, new = shared
    fixed = sum(new[i] and not old[i] for i in old)
    broken = sum(old[i] and not new[i] for i in old)
    return (*paired_mean([int(new[i]) - int(old[i]) for i in old]), fixed, broken)


def paired_gap_difference(run_dir, first, second, task):
    """The gap first[0] - first[1] minus the gap second[0] - second[1] (four labels), paired over the problems all
    four answered: (difference, standard error), or None without all four sets of records."""
    shared = shared_verdicts(run_dir, (*first, *second), task)
    if shared is None:
        return None
    a, b, c, d = shared
    return paired_mean([int(a[i]) - int(b[i]) - int(c[i]) + int(d[i]) for i in a])


def paired_gap_change(run_dir, window, task):
    """How much RL changed the SA - SWA gap (SA's RL gain minus the window's), paired over the problems all four
    models answered: (change, standard error), or None without all four sets of records."""
    return paired_gap_difference(run_dir, ("sa-rl", f"swa{window}-rl"), ("sa-sft", f"swa{window}-sft"), task)


def gap_table(summary, windows, tasks, run_dir):
    lines = ["| window | task | SA-SFT (%) | SWA-SFT (%) | SWA-RL (%) | gap recovered | RL gain, paired (points) | note |",
             "|---|---|---|---|---|---|---|---|"]
    for w in windows:
        for t in tasks:
            (sa, sa_se), (sft, sft_se), (rl, rl_se) = (accuracy(summary, label, t)
                                                       for label in ("sa-sft", f"swa{w}-sft", f"swa{w}-rl"))
            g = gap_recovered(sa, sft, rl)
            paired = paired_gain(run_dir, f"swa{w}-sft", f"swa{w}-rl", t)
            notes = []
            if g is not None and sa < sft:
                notes.append("SWA-SFT is not behind SA-SFT, so there is no gap to recover and the ratio means little")
            if g is not None and None not in (sa_se, sft_se) and abs(sa - sft) < 2 * math.hypot(sa_se, sft_se):
                notes.append("the SFT gap is within 2 standard errors: the ratio is mostly noise")
            if paired is not None and abs(paired[0]) < 2 * paired[1]:
                notes.append("RL's gain is within 2 paired standard errors")
            gain = "-" if paired is None else f"{points(paired)} ({paired[2]} fixed, {paired[3]} broken)"
            lines.append(f"| {w} | {t} | {percent(sa, sa_se)} | {percent(sft, sft_se)} | {percent(rl, rl_se)} | "
                         f"{'undefined' if g is None else f'{g:.3f}'} | {gain} | {'; '.join(notes) or '-'} |")
    return lines


def rl_both_table(summary, windows, tasks, run_dir):
    """RL on both arms: each arm's paired RL gain, and the SA - SWA gap after SFT and after RL."""
    lines = ["| window | task | SA: SFT -> RL (%) | SA RL gain, paired | SWA: SFT -> RL (%) | SWA RL gain, paired "
             "| gap after SFT (points) | gap after RL (points) | gap change, paired (points) |", "|---" * 9 + "|"]

    def gap(sa, swa):
        return "-" if None in (sa, swa) else f"{100 * (sa - swa):.1f}"

    def arrow(before, after):
        return f"{percent(before, None)} -> {percent(after, None)}"

    for w in windows:
        for t in tasks:
            sa_sft, sa_rl, sft, rl = (accuracy(summary, label, t)[0]
                                      for label in ("sa-sft", "sa-rl", f"swa{w}-sft", f"swa{w}-rl"))
            sa_gain, swa_gain = (points(paired_gain(run_dir, f"{a}-sft", f"{a}-rl", t)) for a in ("sa", f"swa{w}"))
            lines.append(f"| {w} | {t} | {arrow(sa_sft, sa_rl)} | {sa_gain} | {arrow(sft, rl)} | {swa_gain} | "
                         f"{gap(sa_sft, sft)} | {gap(sa_rl, rl)} | {points(paired_gap_change(run_dir, w, t))} |")
    return lines


# -- plots ---------------------------------------------------------------------------------------------------

def matplotlib_missing():
    """Why matplotlib cannot be imported, or None when it can. Only the plots need it."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as e:
        return str(e)
    return None


def line_plot(path, title, series, xlabel, ylabel, xticks=None, y_percent=False):
    """A PNG of lines with markers, one per series ({name: [(x, y), ...]}), the legend right of the axes.
    xticks: [(x, label), ...] for a categorical axis; otherwise x counts (RL steps) and ticks are whole numbers.
    y_percent: y values are fractions, labelled as percentages."""
    # imported here, not at the top: without matplotlib the report is still written, without its plots
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    fig = Figure(figsize=(8, 4.5), dpi=120, layout="constrained")  # 960 x 540 pixels
    FigureCanvasAgg(fig)  # Agg renders to files only: no display, no pyplot state shared between plots
    ax = fig.add_subplot()
    for name, points in series.items():
        if points:
            xs, ys = zip(*sorted(points))
            ax.plot(xs, ys, marker="o", markersize=5, linewidth=1.8, label=name)
    if xticks is None:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    else:
        ax.set_xticks([x for x, _ in xticks], [label for _, label in xticks])
    if y_percent:
        ax.yaxis.set_major_formatter(PercentFormatter(xmax=1))
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    fig.legend(loc="outside right upper", frameon=False)
    fig.savefig(path)


# -- trajectories --------------------------------------------------------------------------------------------

def numbers(text):
    """(start, value) of every number in text; values normalised so that 1,200 / 1200 and 7.50 / 7.5 agree."""
    out = []
    for m in NUMBER_RE.finditer(text):
        value = m.group().replace(",", "")
        out.append((m.start(), value.rstrip("0").rstrip(".") if "." in value else value))
    return out


def question_text(prompt, tok):
    """The question inside an evaluate.py prompt: the last user turn without the answer-format instruction
    (common.INSTRUCTION; it comes before the question, and after it in records made before that layout)."""
    template = tok.chat_template if tok else CHATML
    user = template["prefix"].format(role="user")
    start = prompt.rfind(user)
    start = 0 if start < 0 else start + len(user)
    end = prompt.find(template["eot"], start)
    end = len(prompt) if end < 0 else end
    return prompt[start:end].replace(INSTRUCTION, "").strip("\n")


def trajectory_stats(prompt, completion, tok=None):
    """(distances, restated) of one completion.

    A use is an occurrence in the completion of a number that appears in the question; its distance is the number
    of tokens from the start of the nearest earlier occurrence of that number (prompt or completion) to the start
    of the use. Under window W the use is "in window" when distance <= W: the position that predicts its first
    token then attends that occurrence directly. restated: a question number is used before the first computation
    (a number, an operator + - * / × ÷, a number), or anywhere when there is none. Tokens come from the
    checkpoint's tokenizer; without one they are approximated as characters / 4."""
    if tok is not None:  # the prompt holds special tokens (chat template), the completion is plain text
        offsets = tok.encoding.decode_with_offsets(tok.encode_special(prompt))[1]
        offsets += [len(prompt) + o for o in tok.encoding.decode_with_offsets(tok.encode(completion))[1]]

        def position(c):  # index of the token holding character c
            return bisect.bisect_right(offsets, c) - 1
    else:
        def position(c):
            return c // 4
    question = {value for _, value in numbers(question_text(prompt, tok))}
    first = COMPUTATION_RE.search(completion)
    cut = len(prompt) + (first.start() if first else len(completion))
    last_seen, distances, restated = {}, [], False
    for start, value in numbers(prompt + completion):
        if start >= len(prompt) and value in question:
            distances.append(position(start) - position(last_seen[value]))
            restated |= start < cut
        last_seen[value] = start
    return distances, restated


def trajectory_row(records, ids, window, tok):
    """Table cells for one checkpoint on the problems `ids`, distances judged against `window`."""
    distances, restated, tokens, correct = [], [], [], []
    for i in ids:
        r = records[i]
        for completion, ok, n in zip(r["completions"], r["correct"], r["completion_tokens"]):
            d, s = trajectory_stats(r["prompt"], completion, tok)
            distances += d
            restated.append(s)
            tokens.append(n)
            correct.append(ok)
    inside = sum(d <= window for d in distances) / len(distances) if distances else None
    return [str(len(correct)), str(len(distances)), fmt(None if inside is None else 100 * inside, ".1f"),
            fmt(None if inside is None else 100 - 100 * inside, ".1f"), f"{100 * sum(restated) / len(restated):.1f}",
            f"{sum(tokens) / len(tokens):.1f}", f"{100 * sum(correct) / len(correct):.1f}"]


def gap_breakdown(run_dir, rows):
    """The synthetic task's accuracy per binding distance: tokens from the first number to the question's end
    (data/synthetic/test.jsonl's "gap"). Empty when the run has no synthetic test set with records."""
    path = os.path.join(run_dir, "data", "synthetic", "test.jsonl")
    if not os.path.exists(path):
        return []
    gap = {p["id"]: p["gap"] for p in read_jsonl(path, {"id": (str, int), "gap": int})}
    # each problem reaches its requested gap with a few tokens to spare: gaps within 16 tokens form one group
    groups = []
    for g in sorted(set(gap.values())):
        if groups and g - groups[-1][-1] <= 16:
            groups[-1].append(g)
        else:
            groups.append([g])
    group_of = {g: i for i, group in enumerate(groups) for g in group}
    names = [f"{group[0]}" if len(group) == 1 else f"{group[0]}-{group[-1]}" for group in groups]
    out = ["| checkpoint | window | " + " | ".join(f"gap {n} (%)" for n in names) + " |",
           "|---|---|" + "---|" * len(groups)]
    for r in rows:
        records = os.path.join(run_dir, "eval", r["label"], "synthetic.jsonl")
        if not os.path.exists(records):
            continue
        correct = [[] for _ in groups]
        for rec in label_records(records):
            if rec["id"] in gap:
                correct[group_of[gap[rec["id"]]]].append(rec["correct"][0])
        cells = [percent(sum(c) / len(c), binomial_se(sum(c) / len(c), len(c))) if c else "-" for c in correct]
        out.append(f"| {r['label']} | {window_text(r['window'])} | " + " | ".join(cells) + " |")
    return out if len(out) > 2 else []


def trajectories(run_dir, windows, tasks):
    """The trajectory section: SWA W SFT against SWA W SFT + RL (SA for reference) on the same problems."""
    task = next((t for t in MATH_TASKS if t in tasks), None)
    if task is None:
        return ["No math benchmark was evaluated (only " + ", ".join(tasks) + "), so there is no trajectory "
                "analysis: the synthetic task's training solutions restate both numbers by construction."]
    try:
        tok = Tokenizer.load(os.path.join(run_dir, "base"))
    except OSError:
        tok = None
    out = [f"On {task}, per completion. A *use* is an occurrence in the completion of a number that appears in "
           "the question; its *distance* is the number of tokens from the start of the nearest earlier occurrence "
           "of that number (in the prompt or earlier in the completion) to the start of the use, and it is *within "
           "W* when distance <= W (the position that predicts the use's first token then attends that occurrence "
           "directly, in one layer). A completion *restates* when it uses a question number before its first "
           "computation (a number, one of + - * / × ÷, a number), or anywhere when it computes nothing. "
           + ("Tokens are counted with base/'s tokenizer." if tok else
              "No tokenizer in base/: tokens are approximated as characters / 4."),
           "", "| W | checkpoint | completions | uses | within W (%) | beyond W (%) | restates (%) "
           "| mean completion tokens | accuracy (%) |", "|---" * 9 + "|"]
    examples = []
    for w in windows:
        sft, rl = f"swa{w}-sft", f"swa{w}-rl"
        paths = {label: os.path.join(run_dir, "eval", label, f"{task}.jsonl") for label in ("sa-sft", "sa-rl", sft, rl)}
        # a label without records was not evaluated on this task: it is left out of the rows
        records = {label: {r["id"]: r for r in label_records(path, "prompt", "reference", "completions",
                                                             "completion_tokens")} if os.path.exists(path) else {}
                   for label, path in paths.items()}
        if not records[sft]:
            continue
        present = [label for label, by_id in records.items() if by_id]
        ids = [i for i in records[sft] if all(i in records[label] for label in present)]  # the same problems
        for label in present:
            out.append(f"| {w} | {label} | " + " | ".join(trajectory_row(records[label], ids, w, tok)) + " |")
        if not records[rl]:
            examples += [f"Window {w}: {rl} was not evaluated, so there is nothing to compare SWA-SFT with."]
            continue
        fixed = [i for i in ids if not records[sft][i]["correct"][0] and records[rl][i]["correct"][0]]
        for i in fixed[:2]:
            examples += [f"### Window {w}: {i} (reference answer {records[rl][i]['reference']})", "", "Question:", "",
                         "````text", question_text(records[rl][i]["prompt"], tok)[:600], "````", ""]
            for label, verdict in ((sft, "wrong"), (rl, "right")):
                r = records[label][i]
                text = r["completions"][0]
                distances, _ = trajectory_stats(r["prompt"], text, tok)
                examples += [f"{label} ({verdict}, {r['completion_tokens'][0]} tokens, "
                             f"{sum(d <= w for d in distances)} of {len(distances)} uses within {w}):", "",
                             "````text", text[:600] + (" [...]" if len(text) > 600 else ""), "````", ""]
    examples = examples or ["No problem that SWA-SFT got wrong and SWA-RL got right."]
    return out + ["", "## Examples: SWA-SFT wrong, SWA-RL right", "",
                  "First completion of each, truncated to 600 characters.", "", *examples]


# -- the trace task: how completions use the window -----------------------------------------------------------

TRACE_COLUMNS = ("| checkpoint | window | completions | accuracy (%) | fits the window (%) | accuracy when it fits "
                 "(%) | accuracy when it does not (%) | window style (%) | full style (%) | mixed (%) | restatements "
                 "per step | mean largest copy distance | mean tokens |")


def trace_row(label, window, records):
    """Table cells of one checkpoint's trace-task records (data.trace.trajectory per completion)."""
    pairs = [(t, ok) for r in records for t, ok in zip(r.get("trajectories", []), r["correct"])]
    if not pairs:
        return None
    n = len(pairs)
    fits = [ok for t, ok in pairs if t["fits"]]
    misses = [ok for t, ok in pairs if not t["fits"]]
    styles = collections.Counter(t["style"] for t, _ in pairs)
    restated = [t["restatements_per_step"] for t, _ in pairs if t["restatements_per_step"] is not None]
    distances = [t["max_distance"] for t, _ in pairs if t["max_distance"] is not None]

    def share(values):
        return fmt(100 * sum(values) / len(values) if values else None, ".1f")

    return (f"| {label} | {window_text(window)} | {n} | {share([ok for _, ok in pairs])} | {100 * len(fits) / n:.1f} "
            f"| {share(fits)} | {share(misses)} | {100 * styles['window'] / n:.1f} | {100 * styles['full'] / n:.1f} "
            f"| {100 * styles['mixed'] / n:.1f} | {fmt(sum(restated) / len(restated) if restated else None, '.2f')} "
            f"| {fmt(sum(distances) / len(distances) if distances else None, '.1f')} "
            f"| {sum(t['length'] for t, _ in pairs) / n:.1f} |")


def evaluated_rows(run_dir, eval_dir):
    """The evaluation rows of <run>/<eval_dir>/summary.json in the report's order; [] without it."""
    path = os.path.join(run_dir, eval_dir, "summary.json")
    return evaluations(read_summary(path), run_dir)[0] if os.path.exists(path) else []


def evaluated_records(run_dir, eval_dir, task):
    """(evaluation row, path of its per-problem records) for every checkpoint in <run>/<eval_dir>/summary.json
    whose records of `task` are there, in the report's order."""
    for r in evaluated_rows(run_dir, eval_dir):
        records_path = os.path.join(run_dir, eval_dir, r["label"], f"{task}.jsonl")
        if os.path.exists(records_path):
            yield r, records_path


def trace_table(run_dir, eval_dir, task="trace"):
    """One row per checkpoint evaluated on the trace task in <run>/<eval_dir>/ (greedy eval/, sampled
    eval-sampled/)."""
    lines = []
    for r, records_path in evaluated_records(run_dir, eval_dir, task):
        row = trace_row(r["label"], r["window"], label_records(records_path))
        lines += [row] if row else []
    return [TRACE_COLUMNS, "|---" * 13 + "|", *lines] if lines else []


COPY_BIN = 32  # tokens per bin of the copy-fidelity table; the last bin (4 x COPY_BIN and beyond) is open


def copy_fidelity_table(run_dir, eval_dir="eval", task="trace"):
    """Per checkpoint, the share of copies in its own completions that hold the register's value, by the distance to
    the value's nearest earlier write or faithful copy (data.trace.trace_stats on the re-tokenized records); []
    without base/'s tokenizer or trace records."""
    try:
        tok = Tokenizer.load(os.path.join(run_dir, "base"))
    except OSError:
        return []
    counts = {}
    for r, records_path in evaluated_records(run_dir, eval_dir, task):
        copies, faithful = collections.Counter(), collections.Counter()
        for record in label_records(records_path, "prompt", "completions"):
            prompt = tok.encode_special(record["prompt"])
            for completion in record["completions"]:
                for c in trace.trace_stats(prompt, tok.encode(completion), tok)["copies"]:
                    b = min(c["nearest"] // COPY_BIN, 4)
                    copies[b] += 1
                    faithful[b] += c["faithful"]
        counts[(r["label"], r["window"])] = copies, faithful
    bins = sorted({b for copies, _ in counts.values() for b in copies})
    if not bins:
        return []
    names = [f"{b * COPY_BIN}-{(b + 1) * COPY_BIN - 1}" if b < 4 else f"{b * COPY_BIN}+" for b in bins]
    lines = ["| checkpoint | window | " + " | ".join(names) + " |", "|---" * (len(bins) + 2) + "|"]
    for (label, window), (copies, faithful) in counts.items():
        cells = [f"{100 * faithful[b] / copies[b]:.1f} ({copies[b]})" if copies[b] else "-" for b in bins]
        lines.append(f"| {label} | {window_text(window)} | " + " | ".join(cells) + " |")
    return lines


def recall_tables(run_dir):
    """Teacher-forced per-copy accuracy against copy distance (analysis/recall.py's <run>/recall.json): how far
    back each checkpoint recalls a value, directly or through its layers. Two tables, each [] when it has no
    bins: by the distance to the value's last write ("bins"), and to its nearest earlier write or copy
    ("bins_nearest")."""
    path = os.path.join(run_dir, "recall.json")
    if not os.path.exists(path):
        return [], []
    results = load_recall(path)
    return recall_table(results, "bins"), recall_table(results, "bins_nearest")


def recall_table(results, key):
    """One table of recall.json's results: a row per checkpoint with bins under `key`, a column per bin."""
    results = {label: r for label, r in results.items() if r.get(key)}
    if not results:
        return []
    los = sorted({b["lo"] for r in results.values() for b in r[key]})
    width = next(b["hi"] - b["lo"] + 1 for r in results.values() for b in r[key])
    lines = ["| checkpoint | window | " + " | ".join(f"{lo}-{lo + width - 1}" for lo in los) + " |",
             "|---|---|" + "---|" * len(los)]
    for label, r in results.items():
        bins = {b["lo"]: b for b in r[key]}
        cells = [f"{100 * bins[lo]['correct'] / bins[lo]['copies']:.1f}" if lo in bins else "-" for lo in los]
        lines.append(f"| {label} | {window_text(r['window'])}" + (f" + {r['sinks']} sinks" if r["sinks"] else "")
                     + " | " + " | ".join(cells) + " |")
    return lines


def trace_examples(run_dir, limit=2):
    """Problems that the windowed SFT model got wrong and its RL model right: both completions, with how they used
    the window."""
    out = []
    for sft in sorted(d for d in os.listdir(run_dir) if ARM_RE.match(d) and d.startswith("swa") and d.endswith("-sft")):
        rl = sft[:-len("sft")] + "rl"
        paths = [os.path.join(run_dir, "eval", label, "trace.jsonl") for label in (sft, rl)]
        if not all(os.path.exists(p) for p in paths):
            continue
        before, after = ({r["id"]: r for r in label_records(p, "reference", "completions", "completion_tokens",
                                                       "trajectories")} for p in paths)
        fixed = [i for i in before if i in after and not before[i]["correct"][0] and after[i]["correct"][0]]
        for i in fixed[:limit]:
            out += [f"### {i} (answer {after[i]['reference']})", ""]
            for label, r in ((sft, before[i]), (rl, after[i])):
                t = r["trajectories"][0]
                out += [f"{label}: {'right' if r['correct'][0] else 'wrong'}, {t['style'] or 'no'} style, largest copy "
                        f"distance {t['max_distance']}, {'fits' if t['fits'] else 'does not fit'} the window, "
                        f"{r['completion_tokens'][0]} tokens", "", "````text", r["completions"][0][:900], "````", ""]
    return out


def pass_at_k_table(run_dir, eval_dir="eval-passk", task="trace"):
    """Per checkpoint sampled many times (evaluate.py --samples n), pass@k for k = 1, 2, 4, ..., n and maj@n from
    <run>/<eval_dir>/summary.json; [] without it."""
    metrics = [(r, r["entry"].get("tasks", {}).get(task) or {}) for r in evaluated_rows(run_dir, eval_dir)]
    ks = sorted({int(k[5:]) for _, m in metrics for k in m if k.startswith("pass@")})
    majority = sorted({k for _, m in metrics for k in m if k.startswith("maj@")})
    if not ks:
        return []
    columns = [f"pass@{k}" for k in ks] + majority
    lines = ["| checkpoint | window | problems | " + " | ".join(columns) + " |", "|---" * (3 + len(columns)) + "|"]
    for r, m in metrics:
        cells = [fmt(None if m.get(c) is None else 100 * m[c], ".1f") for c in columns]
        lines.append(f"| {r['label']} | {window_text(r['window'])} | {m.get('n_problems', '-')} | " +
                     " | ".join(cells) + " |")
    return lines


def wrong_answers_table(run_dir, eval_dir="eval", task="trace"):
    """Per checkpoint, where its wrong completions fail (data.trace.what_went_wrong): the Sum line adds wrong values
    (lost or miscomputed on the way), adds the right ones wrong, or is missing; [] without trace records whose
    prompts state their program."""
    lines = []
    for r, records_path in evaluated_records(run_dir, eval_dir, task):
        kinds = collections.Counter()
        for record in label_records(records_path, "prompt", "completions"):
            for completion, correct in zip(record["completions"], record["correct"]):
                kinds["right" if correct else trace.what_went_wrong(record["prompt"], completion)] += 1
        n = sum(kinds.values())
        if n and None not in kinds:
            shares = [f"{100 * kinds[k] / n:.1f}" for k in ("right", "terms", "addition", "no sum")]
            lines.append(f"| {r['label']} | {window_text(r['window'])} | {n} | " + " | ".join(shares) + " |")
    return ["| checkpoint | window | completions | right (%) | wrong values summed (%) | right values, wrong "
            "addition (%) | no Sum line (%) |", "|---" * 7 + "|", *lines] if lines else []


def trace_section(run_dir, logs, draw_plots):
    """The trace task's part of the report: trajectories per checkpoint (greedy and sampled), accuracy against the
    copy distance, the window's use over RL, and examples."""
    greedy, sampled = trace_table(run_dir, "eval"), trace_table(run_dir, "eval-sampled")
    by_distance, by_nearest = recall_tables(run_dir)
    if not (greedy or sampled or by_distance):
        return []
    out = ["## How completions use the window (trace task)", "",
           "Per completion (data/trace.py): every value a step, a restatement or the sum copies, and its *distance*: "
           "from the query that predicts the copy to the token of the value it copies. It *fits the window* when "
           "every distance is at most W - 1, so that every copy can attend its value directly; beyond that a value "
           "can only be relayed through the layers. *Window style* restates the state at every step, *full style* "
           "never, *mixed* sometimes. Accuracy is of the final answer.", ""]
    if greedy:
        out += ["Greedy decoding (`eval/`):", "", *greedy, ""]
    if sampled:
        out += ["Sampled at temperature 1 (`eval-sampled/`): a mixed-style model's greedy decoding can hide the "
                "style it writes less often.", "", *sampled, ""]
    passk = pass_at_k_table(run_dir)
    if passk:
        out += ["Pass@k (`eval-passk/`): each problem sampled n times at temperature 1; pass@k is the unbiased "
                "estimate that at least one of k samples is right, maj@n the majority answer's accuracy.", "",
                *passk, ""]
    fidelity = copy_fidelity_table(run_dir)
    if fidelity:
        out += ["### Copies in the models' own completions", "", "Every copy of a register's value in each model's "
                "greedy completions (`eval/`, re-tokenized), by the distance from the query that predicts it to the "
                "value's nearest earlier write or faithful copy, in bins of 32 tokens: % of copies that hold the "
                "register's value (number of copies). An erring copy leaves the nearest faithful occurrence where it "
                "was, so the copies after it count as farther back. A digit guessed at random is right 10% of the "
                "time.", "", *fidelity, ""]
    wrong = wrong_answers_table(run_dir)
    if wrong:
        out += ["### Where the wrong answers go wrong", "", "Every greedy completion (`eval/`) by its last Sum line "
                "against the program its prompt states: right; the Sum line adds values other than the registers' "
                "final ones (a value was copied or computed wrong on the way: what the window costs); it adds the "
                "right values but the sum is wrong (arithmetic); or it has no Sum line.", "", *wrong, ""]
    if by_distance:
        out += ["### Recall against copy distance", "", "Teacher-forced (analysis/recall.py): full-style reference "
                "solutions with fillers of several lengths are fed as they are, and at every copy the model's most "
                "likely token is compared with the value (accuracy in %, per bin of copy distance in tokens). A window-W "
                "model attends a value directly only up to W - 1 tokens back; further back only through its layers.",
                "", *by_distance, ""]
    if by_nearest:
        out += ["The same copies by the distance to the nearest earlier place the value was written or copied: with 3 "
                "registers a full-style step's first operand was the previous step's second operand, one line back, "
                "so only the second operands must reach past the line before.", "", *by_nearest, ""]
    series = {key: {arm: [(m["step"], m[key]) for m in lines if m.get(key) is not None] for arm, lines in logs.items()}
              for key in ("fits_window", "window_style")}
    if any(series["fits_window"].values()):
        out += ["### The window's use over RL", "", "| arm | fits the window (first -> last step) | window style | "
                "restatements per step |", "|---|---|---|---|"]
        for arm, lines in logs.items():
            traced = [m for m in lines if m.get("fits_window") is not None]
            if traced:
                first, last = traced[0], traced[-1]
                out.append(f"| {arm} | {100 * first['fits_window']:.1f} -> {100 * last['fits_window']:.1f} | "
                           f"{100 * first['window_style']:.1f} -> {100 * last['window_style']:.1f} | "
                           f"{fmt(first['restatements_per_step'], '.2f')} -> {fmt(last['restatements_per_step'], '.2f')} |")
        out.append("")
        if draw_plots:
            line_plot(os.path.join(run_dir, "rl_fits_window.png"), "rollouts that fit the window, per RL step",
                      series["fits_window"], "RL step", "fits the window", y_percent=True)
            out += ["![rollouts that fit the window, per RL step](rl_fits_window.png)", ""]
    examples = trace_examples(run_dir)
    if examples:
        out += ["### Examples: SWA-SFT wrong, SWA-RL right (greedy)", "", *examples]
    return out


# -- the experiment: SA and SWA, SFT and RL, over seeds -----------------------------------------------------

T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         15: 2.131, 20: 2.086, 30: 2.042}  # the t distribution's 97.5% quantile by degrees of freedom


def t_interval(values):
    """(mean, half-width of the 95% t-interval over the values), the half-width None for fewer than two."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    t = T_975[max(d for d in T_975 if d <= n - 1)]  # conservative between tabulated degrees of freedom
    return mean, t * sd / math.sqrt(n)


def gap_closed(sa_sft, sa_rl, swa_sft, swa_rl):
    """(G_SFT - G_RL) / G_SFT with G = SA - SWA accuracy; None when SFT left no gap (G_SFT ~ 0)."""
    g_sft, g_rl = sa_sft - swa_sft, sa_rl - swa_rl
    return None if abs(g_sft) < EPS else (g_sft - g_rl) / g_sft


def seed_runs(run_dir, window, task="trace"):
    """{seed: verdicts (4, n) of sa-sft, sa-rl, swa<W>-sft, swa<W>-rl on the problems they all answered, greedy}
    for every seed whose SA SFT and both SWA arms were evaluated (seed 0 has no suffix, seed s the suffix
    -seed<s>); sa-rl's row is None in a seed whose SA RL arm was not (its gap recovered is still defined)."""
    seeds = {0} | {int(m.group(5)) for d in os.listdir(os.path.join(run_dir, "eval"))
                   if (m := ARM_RE.match(d)) and m.group(5) and not m.group(4)}
    runs = {}
    for seed in sorted(seeds):
        s = "" if seed == 0 else f"-seed{seed}"
        labels = (f"sa-sft{s}", f"sa-rl{s}", f"swa{window}-sft{s}", f"swa{window}-rl{s}")
        shared = shared_verdicts(run_dir, labels, task) or shared_verdicts(run_dir, labels[:1] + labels[2:], task)
        if shared:
            ids = sorted(shared[0])
            rows = [[int(v[i]) for i in ids] for v in shared]
            runs[seed] = rows if len(rows) == 4 else [rows[0], None, *rows[1:]]
    return runs


def bootstrap_gap_closed(runs, n_boot=2000, seed=0):
    """95% percentile interval of the mean gap closed, resampling seeds and, within each, problems (the four
    models' verdicts on a problem stay together). None when too few resamples are defined."""
    rng = np.random.default_rng(seed)
    arrays = [np.array(v, dtype=float) for v in runs.values()]
    means = []
    for _ in range(n_boot):
        values = []
        for k in rng.integers(len(arrays), size=len(arrays)):
            a = arrays[k]
            acc = a[:, rng.integers(a.shape[1], size=a.shape[1])].mean(axis=1)
            g = gap_closed(*acc)
            if g is not None:
                values.append(g)
        if values:
            means.append(sum(values) / len(values))
    if len(means) < n_boot // 2:
        return None
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def fits_split(records, window):
    """(fraction of completions that fit `window`, accuracy of those that fit, of those that do not) from
    records with trajectories, whatever window the model ran under (every copy fits iff the largest does);
    accuracies None for an empty group."""
    pairs = [(t["max_distance"] is None or t["max_distance"] <= window - 1, ok)
             for r in records for t, ok in zip(r.get("trajectories", []), r["correct"])]
    fit = [ok for f, ok in pairs if f]
    miss = [ok for f, ok in pairs if not f]
    return (len(fit) / len(pairs) if pairs else None, sum(fit) / len(fit) if fit else None,
            sum(miss) / len(miss) if miss else None)


def shift_share(before, after):
    """Split an accuracy change A1 - A0, with A = f a + (1 - f) b (f: fraction that fits, a / b: accuracy of those
    that fit / do not), exactly into a shift term (f1 - f0)(a_mean - b_mean) and a within term
    f_mean (a1 - a0) + (1 - f_mean)(b1 - b0). A group empty on one side takes the other side's accuracy (no
    change within it). Returns (total, shift, within) or None."""
    (f0, a0, b0), (f1, a1, b1) = before, after
    if f0 is None or f1 is None:
        return None
    a0, a1 = (a0 if a0 is not None else a1), (a1 if a1 is not None else a0)
    b0, b1 = (b0 if b0 is not None else b1), (b1 if b1 is not None else b0)
    a0, a1, b0, b1 = (x or 0.0 for x in (a0, a1, b0, b1))  # a group empty on both sides weighs nothing
    total = f1 * a1 + (1 - f1) * b1 - f0 * a0 - (1 - f0) * b0
    f, a, b = (f0 + f1) / 2, (a0 + a1) / 2, (b0 + b1) / 2
    return total, (f1 - f0) * (a - b), f * (a1 - a0) + (1 - f) * (b1 - b0)


CONTROL_KINDS = {"oracle": "SFT on window-style traces only", "mix0": "SFT on full-style traces only",
                 "more": "more SFT, as much compute as RL", "random": "RL on a random reward",
                 "format": "RL on a format-only reward"}


def control_table(run_dir, window, task="trace"):
    """Rows comparing each evaluated control of the SWA-`window` experiment (an arm swa<window>-<stage>-<variant>,
    or SFT at another window) with its seed's SA SFT, SWA SFT and SWA RL, greedy, on the problems they all
    answered, plus how its completions use the window; [] when no control was evaluated."""
    eval_dir = os.path.join(run_dir, "eval")
    rows = []
    for label in sorted(os.listdir(eval_dir) if os.path.isdir(eval_dir) else []):
        m = ARM_RE.match(label)
        if not m or not m.group(2):
            continue
        other_window = int(m.group(2)) != window and m.group(3) == "sft" and not m.group(4)
        if not (other_window or (int(m.group(2)) == window and m.group(4))):
            continue
        s = f"-seed{m.group(5)}" if m.group(5) else ""
        shared = shared_verdicts(run_dir, (f"sa-sft{s}", f"swa{window}-sft{s}", label), task)
        if shared is None:
            continue
        sa, swa, ctrl = (sum(v.values()) / len(v) for v in shared)
        gain = paired_gain(run_dir, f"swa{window}-sft{s}", label, task)
        rl = paired_gain(run_dir, label, f"swa{window}-rl{s}", task)

        def accuracy_and_fits(eval_name):
            path = os.path.join(run_dir, eval_name, label, f"{task}.jsonl")
            if not os.path.exists(path):
                return "-", "-"
            records = read_jsonl(path)
            share = fits_split(records, window)[0]
            acc = sum(ok for r in records for ok in r["correct"]) / sum(len(r["correct"]) for r in records)
            return fmt(100 * acc, ".1f"), fmt(None if share is None else 100 * share, ".1f")
        kind = f"SFT at window {m.group(2)}" if other_window else CONTROL_KINDS.get(m.group(4), m.group(4))
        rows.append(f"| {label} | {m.group(5) or 0} | {kind} | {len(shared[0])} | {100 * ctrl:.1f} | "
                    f"{fmt(gap_recovered(sa, swa, ctrl), '.3f')} | {points(gain)} | {points(rl)} | "
                    f"{accuracy_and_fits('eval')[1]} | {' | '.join(accuracy_and_fits('eval-sampled'))} |")
    if not rows:
        return []
    return [f"### The controls against SWA-{window}", "",
            "Greedy accuracy (%) on the problems the control and its seed's SA SFT and SWA SFT answered; recovered = "
            f"(control - SWA SFT) / (SA SFT - SWA SFT), as for RL above; gains are paired (points, ± standard error); "
            f"fits: the share of completions whose every copy is within {window - 1} tokens. A control that recovers "
            "the gap while its completions do not fit the window closes it without the change of trajectories RL "
            "makes. Controls with no held-out evaluation show only in the RL tables.", "",
            "| control | seed | what it is | problems | accuracy | recovered | gain over SWA SFT | SWA RL minus it "
            "| greedy fits (%) | sampled accuracy (%) | sampled fits (%) |", "|---" * 11 + "|", *rows, ""]


def matched_compute_table(run_dir, window, task="trace"):
    """Per seed that gave both SA SFT and SWA-`window` SFT the same extra SFT (sa-sft-more, swa<window>-sft-more):
    the SA - SWA gap after SFT, after the extra SFT and after RL, each paired over the problems both answered; the
    gap after the extra SFT minus the gap after RL, paired over the problems all four answered; and the means over
    seeds with their t-intervals; [] when no seed has both extra SFT arms."""
    eval_dir = os.path.join(run_dir, "eval")
    labels = os.listdir(eval_dir) if os.path.isdir(eval_dir) else []
    seeds = sorted({int(m.group(5) or 0) for d in labels if (m := ARM_RE.match(d)) and m.group(4) == "more"})
    rows, gaps, differences = [], [], []
    for seed in seeds:
        s = f"-seed{seed}" if seed else ""
        cells = [paired_gain(run_dir, f"swa{window}-{stage}{s}", f"sa-{stage}{s}", task)  # SA minus SWA
                 for stage in ("sft", "sft-more", "rl")]
        if cells[1] is None:
            continue
        gaps.append(cells[1][0])
        cells.append(paired_gap_difference(run_dir, (f"sa-sft-more{s}", f"swa{window}-sft-more{s}"),
                                           (f"sa-rl{s}", f"swa{window}-rl{s}"), task))
        differences += [cells[-1][0]] if cells[-1] else []
        rows.append(f"| {seed} | " + " | ".join(points(g) for g in cells) + " |")
    if not rows:
        return []

    def over_seeds(what, values):
        mean, half = t_interval(values)
        return f"{what}: {100 * mean:+.1f} points" + (
            f", 95% t-interval over {len(values)} seeds [{100 * (mean - half):+.1f}, {100 * (mean + half):+.1f}]."
            if half is not None else " (one seed).")

    summary = [over_seeds("Mean gap after the extra SFT", gaps)]
    if differences:
        summary.append(over_seeds("Mean gap after the extra SFT minus gap after RL (positive: RL leaves the "
                                  "smaller gap)", differences))
    return [f"### SA against SWA-{window} at matched compute", "",
            "The same extra SFT (the \"more SFT\" control) for both attentions: the SA - SWA gap in greedy accuracy "
            "(points, paired over the problems both answered, ± standard error) after SFT, after the extra SFT, and "
            "after RL instead; the last column is the gap after the extra SFT minus the gap after RL, paired over "
            "the problems all four models answered.", "",
            "| seed | gap after SFT | gap after more SFT | gap after RL | more SFT - RL |", "|---" * 5 + "|",
            *rows, "", "\n\n".join(summary), ""]


def experiment_section(run_dir, task="trace"):
    """The primary comparison per seed (SA and SWA, SFT and RL), gap closed with intervals, and the mechanism:
    whether RL moved the windowed model's sampled completions towards ones that fit its window."""
    out = []
    windows = sorted({int(m.group(2)) for d in os.listdir(run_dir) if (m := ARM_RE.match(d)) and m.group(2)
                      and m.group(3) == "rl" and not m.group(4)})
    for w in windows:
        runs = seed_runs(run_dir, w, task)
        if not runs:
            continue
        lines = [f"### SA against SWA-{w}, per seed", "", "Greedy accuracy (%) on the problems all of a seed's "
                 "models answered (\"-\": SA RL not evaluated in that seed); G = SA - SWA (points); gap closed = "
                 "(G_SFT - G_RL) / G_SFT; recovered = (SWA-RL - SWA-SFT) / (SA-SFT - SWA-SFT). Fits: the share of "
                 "sampled completions (`eval-sampled/`) whose every "
                 f"copy is within {w - 1} tokens (window {w}), SFT -> RL; for SA too, which attends everything, as a "
                 "measure of how its trajectories change.", "",
                 "| seed | problems | SA SFT | SA RL | SWA SFT | SWA RL | G after SFT | G after RL | gap closed "
                 "| recovered | SWA fits (%) | SA fits at W (%) |", "|---" * 12 + "|"]
        closed, recovered, shifts = [], [], []
        for seed, verdicts in runs.items():
            acc = [None if v is None else sum(v) / len(v) for v in verdicts]
            g = None if acc[1] is None else gap_closed(*acc)
            closed += [g] if g is not None else []
            rec = gap_recovered(acc[0], acc[2], acc[3])
            recovered += [rec] if rec is not None else []
            s = "" if seed == 0 else f"-seed{seed}"

            def sampled(label):
                path = os.path.join(run_dir, "eval-sampled", label, f"{task}.jsonl")
                return fits_split(read_jsonl(path), w) if os.path.exists(path) else (None, None, None)
            swa = [sampled(f"swa{w}-sft{s}"), sampled(f"swa{w}-rl{s}")]
            sa = [sampled(f"sa-sft{s}"), sampled(f"sa-rl{s}")]
            split = shift_share(*swa)
            if split:
                shifts.append((seed, split))

            def fits(pair):
                return "-" if None in (pair[0][0], pair[1][0]) else f"{100 * pair[0][0]:.1f} -> {100 * pair[1][0]:.1f}"
            g_rl = None if acc[1] is None else 100 * (acc[1] - acc[3])
            cells = " | ".join(fmt(None if a is None else 100 * a, ".1f") for a in acc)
            lines.append(f"| {seed} | {len(verdicts[0])} | {cells} | {100 * (acc[0] - acc[2]):.1f} | "
                         f"{fmt(g_rl, '.1f')} | {fmt(g, '.3f')} | {fmt(rec, '.3f')} | {fits(swa)} | {fits(sa)} |")
        lines.append("")

        def over_seeds(name, values):
            mean, half = t_interval(values)
            return (f"{name} over {len(values)} seed(s): mean {mean:.3f}"
                    + (f", 95% t-interval [{mean - half:.3f}, {mean + half:.3f}]" if half is not None else
                       " (one seed: no interval over seeds)"))
        if closed:
            boot = bootstrap_gap_closed({k: v for k, v in runs.items() if v[1] is not None})
            lines += [over_seeds("Gap closed", closed)
                      + (f"; bootstrap over seeds and problems [{boot[0]:.3f}, {boot[1]:.3f}]" if boot else "") + ".",
                      ""]
        if recovered:
            lines += [over_seeds("Recovered", recovered) + ".", ""]
        if shifts:
            lines += [f"Shift-share of SWA-{w}'s sampled accuracy change (points): the shift term is what more "
                      "completions fitting the window is worth at their accuracy, the within term what changed within "
                      "each kind.", "", "| seed | change | shift towards fitting | within |", "|---|---|---|---|"]
            lines += [f"| {seed} | {100 * t:+.1f} | {100 * sh:+.1f} | {100 * wi:+.1f} |" for seed, (t, sh, wi) in shifts]
            lines.append("")
        out += lines + control_table(run_dir, w, task) + matched_compute_table(run_dir, w, task)
    title = "## The experiment: does RL close the window's gap?" + ("" if task == "trace" else f" ({task})")
    return [title, "", *out] if out else []


# -- the report ----------------------------------------------------------------------------------------------

def build_report(run_dir, draw_plots=True):
    """REPORT.md's text. draw_plots: write the PNGs next to it and link them; otherwise the text has no plots."""
    summary = read_summary(os.path.join(run_dir, "eval", "summary.json"))
    rows, other = evaluations(summary, run_dir)
    tasks = sorted({t for r in rows for t in r["entry"]["tasks"]})
    windows = sorted({r["trained_window"] for r in rows if r["trained_window"] is not None})
    out = [f"# Report: {os.path.basename(os.path.normpath(run_dir))}", "",
           "Accuracy, lengths, speed and memory from evaluate.py (`eval/summary.json`). Accuracy is shown ± its "
           "binomial standard error sqrt(p(1-p)/n) over the task's n problems; each row is a single run, so this is "
           "not a spread over seeds. Mean completion tokens, the share of completions with an answer to check "
           "(parsed) and of those cut at the length limit (truncated) are averaged over tasks; peak memory is the "
           "evaluating process's peak (CPU: whole-process RSS).", "", *table(summary, rows, tasks), ""]
    if other:
        out += ["Evaluations outside this layout, not in the table: " + ", ".join(other) + ".", ""]
    by_gap = gap_breakdown(run_dir, rows)
    if by_gap:
        out += ["## Synthetic accuracy by gap", "", "The gap is the distance in tokens from the first number to the "
                "end of the question: beyond the window, the number can reach the answer only through the layers.",
                "", *by_gap, ""]
    out += ["## Gap recovered by RL", "", "(SWA-RL - SWA-SFT) / (SA-SFT - SWA-SFT) on accuracy, per window and task; "
            "undefined when one of the three is missing or SA-SFT and SWA-SFT are equal. The RL gain is SWA-RL - "
            "SWA-SFT on the problems both answered, ± its paired standard error sqrt(f + b - (f - b)^2 / n) / n "
            "(f problems fixed, b broken, out of n).", "",
            *gap_table(summary, windows, tasks, run_dir), ""]
    out += ["## RL on both arms", "", "The gap recovered compares SWA-RL with SA-SFT. When full attention gets the "
            "same RL, the gap left is SA-RL - SWA-RL: RL narrows it only where it gains more under the window than "
            "under full attention. Gains are paired, as above; gaps are SA - SWA in accuracy points. The gap change is "
            "the gap after RL minus the gap after SFT (SA's RL gain minus the window's), averaged over the problems "
            "all four models answered, ± its paired standard error; negative: RL narrowed the gap.", "",
            *rl_both_table(summary, windows, tasks, run_dir), ""]

    # RL curves, one per arm: SA first, then by window, then variants and seeds
    arms = sorted((d for d in os.listdir(run_dir) if ARM_RE.match(d) and ARM_RE.match(d).group(3) == "rl"
                   and os.path.exists(os.path.join(run_dir, d, "metrics.jsonl"))),
                  key=lambda d: (int(ARM_RE.match(d).group(2) or 0), d))
    logs = {arm: read_jsonl(os.path.join(run_dir, arm, "metrics.jsonl"), METRICS_FIELDS, METRICS_OPTIONAL)
            for arm in arms}

    def first_last(points, spec):
        return f"{points[0][1]:{spec}} -> {points[-1][1]:{spec}}" if points else "-"

    curves = {key: {arm: [(m["step"], m[key]) for m in lines if m.get(key) is not None] for arm, lines in logs.items()}
              for key in ("reward", "accuracy", "eval_accuracy", "completion_len_mean")}
    out += ["## RL", "", "From each arm's `metrics.jsonl` (first step -> last step).", "",
            "| arm | steps | mean reward | training accuracy | held-out accuracy | mean completion tokens |",
            "|---|---|---|---|---|---|"]
    for arm, lines in logs.items():
        # rl.py writes config.json with its first checkpoint: without it the run stopped before saving anything
        saved = os.path.exists(os.path.join(run_dir, arm, "config.json"))
        out.append(f"| {arm}{'' if saved else ' (stopped before its first checkpoint)'} | {len(lines)} | " + " | ".join(first_last(curves[key][arm], spec) for key, spec in
                   (("reward", ".3f"), ("accuracy", ".3f"), ("eval_accuracy", ".3f"), ("completion_len_mean", ".1f")))
                   + " |")
    out.append("")
    if any(curves["eval_accuracy"].values()):
        task = next((m["eval_task"] for lines in logs.values() for m in lines if "eval_task" in m), "held-out")
        accuracy_plot = (f"{task} accuracy over RL (held out)", curves["eval_accuracy"])
    else:
        accuracy_plot = ("training accuracy over RL (no held-out accuracy logged)", curves["accuracy"])
    plots = [("rl_reward.png", "mean reward per RL step", curves["reward"], "mean reward", False),
             ("rl_accuracy.png", *accuracy_plot, "accuracy", True),
             ("rl_length.png", "mean completion length per RL step", curves["completion_len_mean"], "tokens", False)]
    for name, title, series, ylabel, y_percent in plots:
        if draw_plots and any(series.values()):
            line_plot(os.path.join(run_dir, name), title, series, "RL step", ylabel, y_percent=y_percent)
            out += [f"![{title}]({name})", ""]

    # accuracy against the window each model was evaluated under ("full" at the right), one line per training
    if tasks:
        main_task = next((t for t in MATH_TASKS if t in tasks), tasks[0])
        evaluated = sorted({r["window"] for r in rows if r["window"] is not None})
        names = {("base", "base"): "base", ("sa", "sft"): "SA SFT", ("sa", "rl"): "SA SFT+RL",
                 ("swa", "sft"): "SWA SFT", ("swa", "rl"): "SWA SFT+RL"}
        series = {name: [] for name in names.values()}
        # attention sinks change the model: points keep the sinks the trained arms have (the most common)
        arm_sinks = collections.Counter(r["sinks"] for r in rows if r["trained"] != "base").most_common(1)
        sinks = arm_sinks[0][0] if arm_sinks else 0
        for r in rows:
            p, _ = accuracy(summary, r["label"], main_task)
            # an SWA arm run under another window is not "its" window
            if p is None or r["sinks"] != sinks or r["replicate"] or (r["trained"].startswith("swa")
                                                                      and r["window"] != r["trained_window"]):
                continue
            x = len(evaluated) if r["window"] is None else evaluated.index(r["window"])
            series[names[r["trained"].rstrip("0123456789"), r["stage"]]].append((x, p))
        if draw_plots and any(series.values()):
            title = f"{main_task} accuracy against attention window"
            line_plot(os.path.join(run_dir, "accuracy_vs_window.png"), title, series, "window (tokens)", "accuracy",
                      xticks=[(i, str(w)) for i, w in enumerate(evaluated)] + [(len(evaluated), "full")],
                      y_percent=True)
            out += ["## Accuracy against window", "", "SWA SFT and SWA SFT+RL points are each trained at that window; "
                    "base and SA points are the same weights run under each window.", "",
                    f"![{title}](accuracy_vs_window.png)", ""]

    traced = trace_section(run_dir, logs, draw_plots)
    if os.path.isdir(os.path.join(run_dir, "eval")):  # the trace task, or each math benchmark evaluated
        for task in ["trace"] if "trace" in tasks else [t for t in MATH_TASKS if t in tasks]:
            out += experiment_section(run_dir, task)
    out += traced or ["## Trajectories", "", *trajectories(run_dir, windows, tasks), ""]
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="a preset's directory, e.g. runs/tiny")
    args = parser.parse_args(argv)
    if not os.path.exists(os.path.join(args.run_dir, "eval", "summary.json")):
        fail(f"{args.run_dir}/eval/summary.json not found (run evaluate.py first)")
    if not os.path.isdir(os.path.join(args.run_dir, "base")):
        fail(f"{args.run_dir}/base/ not found: this run predates the base/, sa-*, swa<W>-* layout that "
             "analysis/report.py reads; rerun run.sh")
    missing = matplotlib_missing()
    report = build_report(args.run_dir, draw_plots=missing is None)
    path = os.path.join(args.run_dir, "REPORT.md")
    write_text(path, report)
    print(report)
    print(f"-> {path}")
    if missing:
        print(f"plots skipped: matplotlib cannot be imported ({missing}); pip install matplotlib to draw them")


if __name__ == "__main__":
    run_main(main)
