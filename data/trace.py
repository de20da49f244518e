"""
The register trace task: math problems whose long-range dependencies live in the solution, not in the
question, at distances set in tokens; and a parser that measures how a completion uses the attention window.

A problem: registers A, B, C, ... start with random values 0..mod-1. Step t (1-based) updates register
r = (t-1) % m in turn: r becomes (r + the register after it) mod `mod`, and after the last register comes A.
The answer is the plain sum (not mod) of all registers after K steps. There are mod^m x (step counts) distinct
problems; asking for more fails. The question states the rules first and the start values last, so that the
values end the prompt:

    Registers A, B, C hold digits. Each step updates the next register in turn (A, B, C, A, ...): it becomes
    itself plus the register after it (after C comes A), mod 10. Run 6 steps, then add up all registers.
    Start: A=3 B=5 C=1

With --terse the question is only "Run 6 steps." and the Start line: the rules are left out for a model
trained from scratch, which learns them from the solutions (the tiny preset), at a quarter of the prompt.

Rows carry "instruction": "": the question says how to answer, and its start values end the prompt
(common.user_message).

Two styles of solution. Full-attention style ("full") writes a value only when it changes, so each step
copies values written about m lines back:

    Step 1/6: A=A+B=3+5=8. quiet river lamp
    Step 2/6: B=B+C=5+1=6. sun owl bread
    ...
    Sum: A+B+C=8+6+9=23
    #### 23

Window style ("window") restates the whole state first in every step, so every copy is about one line back:

    Step 1/6: A=3 B=5 C=1. A=A+B=3+5=8. quiet river lamp
    Step 2/6: A=8 B=5 C=1. B=B+C=5+1=6. sun owl bread
    ...
    Final: A=8 B=6 C=9. Sum: A+B+C=8+6+9=23
    #### 23

Every step line ends with filler: exactly F value-free tokens (lowercase words, the leading space included),
counted where they sit, in the solution tokenized as a whole. The distance a full-style solution asks a
model to copy over is set by m and F. Tokens are those of a given tokenizer; without one, characters (the
tokens of the byte-level toy tokenizer).

Rows: id, question, solution, answer, instruction "", style (of the row's solution), registers, steps, filler,
mod, start (the start values), tokenizer (the name of the one that counted tokens) and max_distance: the
largest copy distance (below) of the reference solution of each style, {"full": ..., "window": ...}, measured
after the chat prompt. Each row carries one solution: in window style for a fraction of the rows (exact: the
rounded fraction of n, at seeded positions), in full style for the rest; test rows by default the same, or all
one style (--test-style). Style matters only to SFT; a test problem is scored on its answer.

The parser, trace_stats(prompt_ids, completion_ids, tokenizer), reads a completion of this task (possibly
wrong, truncated or mixing styles) and records every copy: a value written that must be taken from an
earlier place, namely each operand of a step ("5+8": 5 copies A, 8 copies B, as named in "A+B"), each value of
a state restatement ("A=8", which is also a new write of A) and each value of the Sum line. It tracks where
each register's current value was last written: the start values in the prompt's last "Start:" line, a
step's result, or a restatement. A copy is faithful when it equals that value.

Distance: the token at position c that writes a copied value (its first token) is predicted by the query at
c - 1; the value it copies starts at token w (the first token of the last write); distance = (c - 1) - w.
Under window W (query i attends key j iff j <= i and i - j < W) that query attends the value itself iff
distance <= W - 1 (fits_window). Values are never among the first few tokens, so attention sinks do not
change that. The parser reports distances, not verdicts: a model can also relay a value through its layers.
A value can also stand closer than its last write: an earlier faithful copy of it (with 3 registers, a step's
first operand was the previous step's second operand). Each copy's `nearest` is its distance to the nearest
earlier place the register's current value was written or faithfully copied; `distance` stays the one to the
last write, which fits_window and max_distance use. In a full-style solution the first operands and most of
the sum are one line from a copy of their value; the second operands, written two lines back, are the copies
that bind.

what_went_wrong(prompt, completion) says where a wrong completion fails: the values its Sum line adds are not
the registers' final ones (a value was copied or computed wrong on the way), or they are and the addition is
wrong.

    python -m data.trace                      # data/trace/{train,test}.jsonl, characters as tokens
    python -m data.trace --n-train 4000 --n-test 1000 --registers 3 --steps 4,8 --filler 24 \\
        --window-style-fraction 0.2 --tokenizer ckpt/base --out-dir data/trace

    from data.trace import trace_stats, fits_window
    stats = trace_stats(prompt_ids, completion_ids, tokenizer)
    stats["max_distance"], stats["style"], fits_window(stats, 64)

Test: python -m pytest -q tests/test_trace.py
"""

import argparse
import bisect
import os
import random
import re

from common import DATA_DIR, build_prompt, fail, run_main, write_jsonl
from tokenizer import Tokenizer, toy_tokenizer

STYLES = ("full", "window")
# Lowercase, no digits, no one-letter words; two to eight letters, so that characters reach every F >= 3.
FILLER_WORDS = (
    "so", "we", "go", "up", "on", "red", "sun", "tea", "owl", "map", "lamp", "tree", "rain", "bird", "road",
    "calm", "green", "river", "stone", "cloud", "bread", "quiet", "garden", "window", "yellow", "summer",
    "morning", "blanket", "lantern", "mountain", "painting",
)


# ----------------------------------------------------------------------------------------------------------
# The program

def register_names(m):
    return [chr(ord("A") + i) for i in range(m)]


def run_program(start, steps, mod):
    """Run the registers. Returns (trace, final): trace has one (register, next register, its value, the next
    one's value, result) per step, registers as indices; final is the values after the last step."""
    values, trace = list(start), []
    for t in range(1, steps + 1):
        r = (t - 1) % len(values)
        n = (r + 1) % len(values)
        x, y = values[r], values[n]
        values[r] = (x + y) % mod
        trace.append((r, n, x, y, values[r]))
    return trace, values


def question_text(start, steps, mod, terse=False):
    names = register_names(len(start))
    run, start_line = f"Run {steps} step{'s' if steps != 1 else ''}", f"Start: {state_text(names, start)}"
    if terse:  # the rules left out: a model trained from scratch learns them from the solutions
        return f"{run}.\n{start_line}"
    holds = "digits" if mod <= 10 else f"numbers from 0 to {mod - 1}"
    return (f"Registers {', '.join(names)} hold {holds}. Each step updates the next register in turn "
            f"({', '.join(names)}, A, ...): it becomes itself plus the register after it (after {names[-1]} "
            f"comes A), mod {mod}. {run}, then add up all registers.\n{start_line}")


def state_text(names, values):
    return " ".join(f"{name}={value}" for name, value in zip(names, values))


def solution_text(start, steps, mod, style, next_filler=lambda: ""):
    """The reference solution in `style`, each step line ending with the text next_filler() returns.
    Returns (text, spans): spans are the filler's (start, end) character offsets in the text, one per step."""
    names = register_names(len(start))
    trace, final = run_program(start, steps, mod)
    values, lines, spans, offset = list(start), [], [], 0
    for t, (r, n, x, y, result) in enumerate(trace, 1):
        restated = f" {state_text(names, values)}." if style == "window" else ""
        line = f"Step {t}/{steps}:{restated} {names[r]}={names[r]}+{names[n]}={x}+{y}={result}."
        filler = next_filler()
        spans.append((offset + len(line), offset + len(line) + len(filler)))
        lines.append(line + filler)
        offset += len(line) + len(filler) + 1
        values[r] = result
    total = f"Sum: {'+'.join(names)}={'+'.join(map(str, final))}={sum(final)}"
    lines.append(f"Final: {state_text(names, final)}. {total}" if style == "window" else total)
    lines.append(f"#### {sum(final)}")
    return "\n".join(lines), spans


# ----------------------------------------------------------------------------------------------------------
# Filler of an exact number of tokens

def filler_costs(tokenizer):
    """{word: tokens} of each filler word as it is written, after a space."""
    return {word: len(tokenizer.encode(" " + word)) for word in FILLER_WORDS}


def filler_words(rng, n_tokens, costs, tokenizer_name="characters"):
    """Random filler words of exactly n_tokens tokens in all (costs from filler_costs), as " w1 w2 ...";
    "" for 0. Every pick keeps the rest reachable, so it never backtracks."""
    reachable = [True] + [False] * n_tokens
    for k in range(1, n_tokens + 1):
        reachable[k] = any(c <= k and reachable[k - c] for c in costs.values())
    if not reachable[n_tokens]:
        sizes = ", ".join(str(k) for k in range(1, n_tokens) if reachable[k]) or "none"
        fail(f"the filler words cannot make exactly {n_tokens} tokens in {tokenizer_name} "
             f"(sizes below {n_tokens} they make: {sizes})")
    words, left = [], n_tokens
    while left:
        word = rng.choice([w for w, c in costs.items() if c <= left and reachable[left - c]])
        words.append(word)
        left -= costs[word]
    return "".join(" " + w for w in words)


def check_filler(text, spans, n_tokens, tokenizer):
    """The filler spans are exactly n_tokens tokens each in `text` tokenized whole; a token merged across a
    span's edge (BPE without a pre-tokenizer split there) would make the step lines' lengths drift."""
    if n_tokens == 0:
        return
    starts, _ = token_starts(tokenizer.encode(text), tokenizer)
    for begin, end in spans:
        lo, hi = bisect.bisect_left(starts, begin), bisect.bisect_left(starts, end)
        edges_kept = starts[lo:lo + 1] == [begin] and (end == len(text) or starts[hi:hi + 1] == [end])
        if not edges_kept or hi - lo != n_tokens:
            how = "merged with the text around it" if not edges_kept else f"{hi - lo} tokens there"
            fail(f"tokenizer {tokenizer.name} does not keep a filler of {n_tokens} tokens intact inside a "
                 f"solution: {text[begin:end]!r} is {how}")


# ----------------------------------------------------------------------------------------------------------
# Problems and splits

def count_problems(registers, steps, mod):
    """Distinct questions for these settings: start values times step counts."""
    return mod ** registers * (steps[1] - steps[0] + 1)


def check_settings(registers, steps, mod, filler, window_style_fraction):
    if not 2 <= registers <= 26:
        fail(f"registers must be 2..26, got {registers}")
    if not 1 <= steps[0] <= steps[1]:
        fail(f"steps must be a range min,max with 1 <= min <= max, got {steps[0]},{steps[1]}")
    if mod < 2:
        fail(f"mod must be >= 2, got {mod}")
    if not filler or min(filler) < 0:
        fail(f"filler must be one or more token counts >= 0, got {list(filler)}")
    if not 0 <= window_style_fraction <= 1:
        fail(f"window style fraction must be in [0, 1], got {window_style_fraction}")


def make_row(problem_id, question, start, steps, mod, filler, style, tokenizer, costs):
    """A row for `question` with both reference solutions measured; it keeps the one in `style`. Filler words
    depend only on the problem's id and the style."""
    row = {"id": problem_id, "question": question, "instruction": ""}
    prompt = build_prompt(tokenizer, row)
    solutions, max_distance = {}, {}
    for s in STYLES:
        rng = random.Random(f"{problem_id}:{s}")
        text, spans = solution_text(start, steps, mod, s, lambda: filler_words(rng, filler, costs, tokenizer.name))
        check_filler(text, spans, filler, tokenizer)
        solutions[s] = text
        max_distance[s] = trace_stats(prompt, tokenizer.encode(text), tokenizer)["max_distance"]
    return {**row, "solution": solutions[style], "answer": str(sum(run_program(start, steps, mod)[1])),
            "style": style, "registers": len(start), "steps": steps, "filler": filler, "mod": mod,
            "start": list(start), "tokenizer": tokenizer.name, "max_distance": max_distance}


def make_split(split, n, seed=0, registers=3, steps=(4, 8), mod=10, filler=(24,), window_style_fraction=0.0,
               tokenizer=None, exclude=(), terse=False):
    """n problems of `split`. Candidate i draws its step count and start values from (seed, split, i); a
    question in `exclude` (the test set, when making train) or already taken is skipped, so splits are
    disjoint by construction. Row k of the split gets filler filler[k % len(filler)], and the window style at
    round(window_style_fraction * n) positions drawn from (seed, split). tokenizer None counts characters;
    terse questions state only the step count and the start values."""
    check_settings(registers, steps, mod, filler, window_style_fraction)
    tokenizer = toy_tokenizer() if tokenizer is None else tokenizer
    exclude = set(exclude)
    possible = count_problems(registers, steps, mod)
    # excluded questions of these settings (the text before their start values is one of these) use some up
    rules = {question_text([0] * registers, k, mod, terse).split("\nStart:")[0]
             for k in range(steps[0], steps[1] + 1)}
    taken = sum(q.split("\nStart:")[0] in rules for q in exclude)
    if n > possible - taken:
        fail(f"asked for {n:,} {split} problems, but registers {registers}, steps {steps[0]}..{steps[1]}, "
             f"mod {mod} make only {possible:,} distinct problems" + (f", {taken:,} of them excluded" if taken else ""))
    window_rows = set(random.Random(f"swarr-trace:{seed}:{split}:styles").sample(
        range(n), round(window_style_fraction * n)))
    costs = filler_costs(tokenizer)
    rows, i = [], 0
    while len(rows) < n:
        rng = random.Random(f"swarr-trace:{seed}:{split}:{i}")  # str seeds are stable across runs
        k_steps = rng.randint(*steps)
        start = [rng.randrange(mod) for _ in range(registers)]
        i += 1
        question = question_text(start, k_steps, mod, terse)
        if question in exclude:
            continue
        exclude.add(question)
        k = len(rows)
        style = "window" if k in window_rows else "full"
        rows.append(make_row(f"trace-{split}-{seed}-{i - 1}", question, start, k_steps, mod,
                             filler[k % len(filler)], style, tokenizer, costs))
    return rows


# ----------------------------------------------------------------------------------------------------------
# The parser

START_RE = re.compile(rb"Start:((?: +[A-Z]=\d+)+)")
ASSIGNMENT_RE = re.compile(rb"([A-Z])=(\d+)")
NUMBER_RE = re.compile(rb"\d+")
# Leftmost first: a step "A=A+B=3+5=8" (the tail may be cut off), a Sum line, a restatement "A=8" standing
# alone (not "B=3" inside "A+B=3+5"), a line break.
EVENT_RE = re.compile(
    rb"(?P<target>[A-Z])=(?P<left>[A-Z])\+(?P<right>[A-Z])=(?P<x>\d+)(?:\+(?P<y>\d+)(?:=(?P<result>\d+))?)?"
    rb"|Sum: *(?P<names>[A-Z](?:\+[A-Z])*)=(?P<values>\d+(?:\+\d+)*)"
    rb"|(?<![\w+=])(?P<name>[A-Z])=(?P<value>\d+)(?![\w+=])"
    rb"|(?P<newline>\n)")


def token_starts(ids, tokenizer):
    """(starts, data): the byte offset where each token begins in `data`, the tokens' bytes joined. Bytes, not
    characters: a model may split a character over tokens or write invalid UTF-8. An id the tokenizer lacks
    (a padded vocabulary) is empty."""
    try:
        pieces = tokenizer.encoding.decode_tokens_bytes(ids)
    except (KeyError, OverflowError):
        pieces = []
        for i in ids:
            try:
                pieces.append(tokenizer.encoding.decode_single_token_bytes(i))
            except (KeyError, OverflowError):
                pieces.append(b"")
    starts, offset = [], 0
    for piece in pieces:
        starts.append(offset)
        offset += len(piece)
    return starts, b"".join(pieces)


def canonical(digits):
    return digits.lstrip(b"0") or b"0"  # compared as text: a model may write a number too long for int()


def trace_stats(prompt_ids, completion_ids, tokenizer):
    """How a completion of the trace task copies values (module docstring: copies, distance). Never raises
    on model output; what it cannot parse it skips. Returns a dict:
        copies: [{register, position (token index in prompt + completion), distance, nearest, faithful,
            restatement}] for registers with a known last write
        n_copies, unfaithful (copies that differ from the register's value), max_distance (None: no copies)
        restatements (all), restatements_per_step (those on step lines, per step; None: no steps)
        steps: complete step updates "A=A+B=3+5=8"
        style: "window" if every step restates something first, "full" if none does, "mixed", None: no steps
        length: completion tokens"""
    ids = list(prompt_ids) + list(completion_ids)
    starts, data = token_starts(ids, tokenizer)
    prompt_bytes = starts[len(prompt_ids)] if len(completion_ids) else len(data)

    def token_at(byte):
        return bisect.bisect_right(starts, byte) - 1

    last_write = {}  # register -> (canonical value, token position of its first token)
    last_seen = {}  # register -> token position of the latest write or faithful copy of its current value

    def write(name, value, byte):
        last_write[name] = (canonical(value), token_at(byte))
        last_seen[name] = last_write[name][1]

    starts_in_prompt = list(START_RE.finditer(data, 0, prompt_bytes))
    if starts_in_prompt:
        line = starts_in_prompt[-1]
        for a in ASSIGNMENT_RE.finditer(data, line.start(1), line.end(1)):
            write(a.group(1), a.group(2), a.start(2))

    copies = []

    def copy(name, value, byte, restatement):
        if name in last_write:
            written, w = last_write[name]
            c = token_at(byte)
            faithful = canonical(value) == written
            copies.append({"register": name.decode(), "position": c, "distance": c - 1 - w,
                           "nearest": c - 1 - last_seen[name], "faithful": faithful, "restatement": restatement})
            if faithful:
                last_seen[name] = c

    restatements, step_restatements, pending, step_restates = 0, 0, 0, []
    for e in EVENT_RE.finditer(data, prompt_bytes):
        if e.group("newline"):
            pending = 0
        elif e.group("name"):
            copy(e.group("name"), e.group("value"), e.start("value"), True)
            write(e.group("name"), e.group("value"), e.start("value"))
            restatements += 1
            pending += 1
        elif e.group("target"):
            copy(e.group("left"), e.group("x"), e.start("x"), False)
            if e.group("y") is not None:
                copy(e.group("right"), e.group("y"), e.start("y"), False)
            if e.group("result") is not None:
                write(e.group("target"), e.group("result"), e.start("result"))
                step_restates.append(pending > 0)
                step_restatements += pending
            pending = 0
        else:
            names = e.group("names").split(b"+")
            for name, value in zip(names, NUMBER_RE.finditer(data, e.start("values"), e.end("values"))):
                copy(name, value.group(), value.start(), False)

    steps = len(step_restates)
    style = None if not steps else "window" if all(step_restates) else "full" if not any(step_restates) else "mixed"
    return {"copies": copies, "n_copies": len(copies), "unfaithful": sum(not c["faithful"] for c in copies),
            "max_distance": max((c["distance"] for c in copies), default=None),
            "restatements": restatements, "restatements_per_step": step_restatements / steps if steps else None,
            "steps": steps, "style": style, "length": len(completion_ids)}


def fits_window(stats, window):
    """Every copy's query attends the copied value directly under `window` (None: full attention)."""
    return window is None or all(c["distance"] <= window - 1 for c in stats["copies"])


def trajectory(prompt_ids, completion_ids, tokenizer, window):
    """What evaluate.py and rl.py record of one completion: trace_stats without the list of copies, plus whether
    every copy fits `window`, the window the model ran under."""
    stats = trace_stats(prompt_ids, completion_ids, tokenizer)
    summary = {k: v for k, v in stats.items() if k != "copies"}
    summary["fits"] = fits_window(stats, window)
    return summary


PROGRAM_RE = re.compile(r"mod (\d+)\. Run (\d+) step")
SUM_LINE_RE = re.compile(r"Sum: *[A-Z](?:\+[A-Z])*=(\d+(?:\+\d+)*)=")


def what_went_wrong(prompt, completion):
    """Where a wrong completion of this task fails, read from its last Sum line against the program the prompt
    states (its last Start line, its mod and step count): "terms" (the Sum line adds values other than the
    registers' final ones: a value was copied or computed wrong on the way), "addition" (the right values,
    added wrong) or "no sum" (no finished Sum line). None when the prompt states no program (terse questions)."""
    starts, program = START_RE.findall(prompt.encode()), PROGRAM_RE.findall(prompt)
    if not starts or not program:
        return None
    mod, steps = map(int, program[-1])
    final = run_program([int(v) for _, v in ASSIGNMENT_RE.findall(starts[-1])], steps, mod)[1]
    sums = SUM_LINE_RE.findall(completion)
    if not sums:
        return "no sum"
    return "terms" if [int(v) for v in sums[-1].split("+")] != final else "addition"


def is_trace_task(task):
    """Tasks whose problems are trace problems: "trace" and its variants ("trace-sweep", ...)."""
    return task == "trace" or task.startswith("trace-")


# ----------------------------------------------------------------------------------------------------------
# Command line

def int_list(flag, text):
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        fail(f"{flag} must be comma-separated integers, got {text!r}")


def summary(split, rows, path):
    styles = ", ".join(f"{sum(r['style'] == s for r in rows):,} {s}" for s in STYLES)
    ranges = ", ".join(f"{s} {min(r['max_distance'][s] for r in rows)}..{max(r['max_distance'][s] for r in rows)}"
                       for s in STYLES) if rows else "-"
    return f"trace/{split}: {len(rows):,} problems ({styles} style); max copy distance in tokens: {ranges} -> {path}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-train", type=int, default=4000, help="number of training problems")
    parser.add_argument("--n-test", type=int, default=500, help="number of test problems")
    parser.add_argument("--registers", type=int, default=3, help="registers A, B, C, ... (2..26)")
    parser.add_argument("--steps", default="4,8", help="min,max steps (or one number), drawn per problem")
    parser.add_argument("--mod", type=int, default=10, help="register values are 0..mod-1")
    parser.add_argument("--filler", default="24",
                        help="filler tokens after each step: one count, or a comma-separated list cycled over problems")
    parser.add_argument("--window-style-fraction", type=float, default=0.0,
                        help="fraction of the problems whose solution is in window style (exact, at seeded positions)")
    parser.add_argument("--test-style", choices=("mixed", "full", "window"), default="mixed",
                        help="style of the test solutions: mixed as --window-style-fraction, or all one style")
    parser.add_argument("--terse", action="store_true",
                        help="questions state only the step count and the start values, not the rules (for a model "
                             "trained from scratch, which learns the rules from the solutions: 4x shorter prompts)")
    parser.add_argument("--seed", type=int, default=0, help="seed; train and test use distinct streams of it")
    parser.add_argument("--tokenizer", default=None,
                        help="checkpoint or tokenizer directory whose tokens count filler and distances "
                             "(default: characters)")
    parser.add_argument("--out-dir", default=os.path.join(DATA_DIR, "trace"), help="output directory")
    args = parser.parse_args()

    steps = int_list("--steps", args.steps)
    if len(steps) > 2:
        fail(f"--steps must be min,max or one number, got {args.steps!r}")
    steps = (steps[0], steps[-1])
    filler = int_list("--filler", args.filler)
    if min(args.n_train, args.n_test) < 0:
        fail("--n-train and --n-test must be >= 0")
    check_settings(args.registers, steps, args.mod, filler, args.window_style_fraction)
    possible = count_problems(args.registers, steps, args.mod)
    if args.n_train + args.n_test > possible:
        fail(f"asked for {args.n_train:,} + {args.n_test:,} problems, but --registers {args.registers} "
             f"--steps {steps[0]},{steps[1]} --mod {args.mod} make only {possible:,} distinct problems")
    tokenizer = None
    if args.tokenizer is not None:
        if not os.path.exists(os.path.join(args.tokenizer, "tokenizer_config.json")):
            fail(f"no tokenizer_config.json in {args.tokenizer}")
        tokenizer = Tokenizer.load(args.tokenizer)

    settings = dict(seed=args.seed, registers=args.registers, steps=steps, mod=args.mod, filler=filler,
                    tokenizer=tokenizer, terse=args.terse)
    test_fraction = {"mixed": args.window_style_fraction, "full": 0.0, "window": 1.0}[args.test_style]
    test = make_split("test", args.n_test, window_style_fraction=test_fraction, **settings)
    train = make_split("train", args.n_train, window_style_fraction=args.window_style_fraction,
                       exclude={r["question"] for r in test}, **settings)
    for split, rows in (("train", train), ("test", test)):
        path = os.path.join(args.out_dir, f"{split}.jsonl")
        write_jsonl(path, rows)
        print(summary(split, rows, path))


if __name__ == "__main__":
    run_main(main)
