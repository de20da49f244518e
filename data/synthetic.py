"""
A controlled long-range task: the answer needs a number stated `gap` tokens before the question.

Each problem states one variable at the top, then filler (neutral facts and distractor assignments to
other variables), then a second variable and the question:

    Let k = 37.
    The lamp is green. Let q = 12. The river is cold. ...      <- at least `gap` tokens after "37"
    Let w = 5.
    What is k + w?

with the solution "k = 37 and w = 5, so k + w = 37 + 5 = 42.\\n#### 42". A model whose attention window is
shorter than the gap cannot see 37 when it answers (the distractors rule out guessing), so full and
sliding-window attention can be compared on a CPU in minutes. Small gaps are mixed in so a weak model
gets some reward early in RL.

The gap is measured in tokens of a given tokenizer (default: characters, which equals tokens for the
byte-level toy tokenizer). Train and test come from different seeds and test questions never occur in train.

    python -m data.synthetic                                   # data/synthetic/{train,test}.jsonl
    python -m data.synthetic --gaps 0,64,256,1024 --n-train 20000 --tokenizer ckpt/base   # gaps in that tokenizer

Test: python -m pytest -q tests/test_synthetic.py
"""

import argparse
import os
import random

NAMES = list("abcdefghjkmnpqrstuvwxyz")  # single letters; i, l and o are left out (look like digits)
FACTS = [
    "The lamp is green.", "The river is cold.", "A cat sleeps on the mat.", "The train leaves at noon.",
    "Bread is baked in the morning.", "The door is painted blue.", "Birds sing in the garden.",
    "The road is long and quiet.", "A cup of tea is on the table.", "The wind blows from the west.",
]
DEFAULT_GAPS = (0, 32, 128, 512)
# A split gives up after this many draws in a row repeat earlier questions: by then almost all are taken.
MAX_FRUITLESS_DRAWS = 2000


class TooFewQuestions(ValueError):
    """The settings allow fewer distinct questions than were asked for."""


def count_tokens(text, tokenizer=None):
    return len(text) if tokenizer is None else len(tokenizer.encode(text))


def make_problem(rng, gap, tokenizer=None, max_value=99):
    """One problem whose first value sits at least `gap` tokens before the end of the question."""
    a, b, *others = rng.sample(NAMES, len(NAMES))
    va, vb = rng.randint(0, max_value), rng.randint(0, max_value)
    op = rng.choice("+-")
    answer = va + vb if op == "+" else va - vb
    head = f"Let {a} = {va}"

    def filler_sentence():
        if rng.random() < 0.5:
            return rng.choice(FACTS)
        return f"Let {rng.choice(others)} = {rng.randint(0, max_value)}."

    filler = []
    while True:
        middle = "\n" + " ".join(filler) if filler else ""
        question = f"{head}.{middle}\nLet {b} = {vb}.\nWhat is {a} {op} {b}?"
        measured = count_tokens(question, tokenizer) - count_tokens(head, tokenizer)
        if measured >= gap:
            break
        # add about enough sentences to cover the shortfall, then measure the whole text again
        # (summing per-sentence counts is only an estimate: BPE merges across sentence boundaries)
        short = gap - measured
        while short > 0:
            filler.append(filler_sentence())
            short -= count_tokens(filler[-1], tokenizer) + 1
    solution = f"{a} = {va} and {b} = {vb}, so {a} {op} {b} = {va} {op} {vb} = {answer}.\n#### {answer}"
    return {"question": question, "solution": solution, "answer": str(answer), "gap": measured}


def make_split(split, n, seed=0, gaps=DEFAULT_GAPS, tokenizer=None, exclude=(), max_value=99):
    """n problems; problem i is determined by (seed, split, i), gaps cycle through `gaps`.
    Questions in `exclude` (e.g. the test set) are skipped, so splits are disjoint by construction.
    Raises TooFewQuestions (a ValueError) when MAX_FRUITLESS_DRAWS draws in a row give no new question."""
    exclude, rows, i, fruitless = set(exclude), [], 0, 0
    while len(rows) < n:
        rng = random.Random(f"swarr-synthetic:{seed}:{split}:{i}")  # str seeds are stable across runs
        gap = gaps[i % len(gaps)]
        row = make_problem(rng, gap, tokenizer, max_value)
        i += 1
        if row["question"] in exclude:
            fruitless += 1
            if fruitless == MAX_FRUITLESS_DRAWS:
                others = len(exclude) - len(rows)
                raise TooFewQuestions(
                    f"{split} split: found only {len(rows):,} distinct questions of the {n:,} asked for"
                    + (f" ({others:,} of other splits left out)" if others else "")
                    + f" with max value {max_value} and gaps {sorted(set(gaps))}: raise --max-value, use larger "
                    f"--gaps, or ask for fewer problems")
            continue
        fruitless = 0
        exclude.add(row["question"])  # no duplicates inside a split either
        rows.append({"id": f"synthetic-{split}-{seed}-{i - 1}", **row})
    return rows


def main():
    from common import DATA_DIR, fail, write_jsonl

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-train", type=int, default=5000, help="number of training problems")
    parser.add_argument("--n-test", type=int, default=500, help="number of test problems")
    parser.add_argument("--gaps", default=",".join(map(str, DEFAULT_GAPS)),
                        help="comma-separated minimum gaps in tokens, cycled over problems (keep a small one)")
    parser.add_argument("--max-value", type=int, default=99,
                        help="values are 0..max-value (9: one-digit sums a toy model learns in minutes)")
    parser.add_argument("--seed", type=int, default=0, help="seed; train and test use distinct streams of it")
    parser.add_argument("--tokenizer", default=None,
                        help="checkpoint or tokenizer directory whose tokens measure the gap (default: characters)")
    parser.add_argument("--out-dir", default=os.path.join(DATA_DIR, "synthetic"), help="output directory")
    args = parser.parse_args()

    try:
        gaps = [int(g) for g in args.gaps.split(",")]
    except ValueError:
        fail(f"--gaps must be comma-separated integers, got {args.gaps!r}")
    if not gaps or min(gaps) < 0:
        fail("--gaps must be non-negative")
    if args.max_value < 1:
        fail("--max-value must be >= 1")
    tokenizer = None
    if args.tokenizer is not None:
        from tokenizer import Tokenizer
        if not os.path.exists(os.path.join(args.tokenizer, "tokenizer_config.json")):
            fail(f"no tokenizer_config.json in {args.tokenizer}")
        tokenizer = Tokenizer.load(args.tokenizer)

    try:
        test = make_split("test", args.n_test, args.seed, gaps, tokenizer, max_value=args.max_value)
        train = make_split("train", args.n_train, args.seed, gaps, tokenizer,
                           exclude={r["question"] for r in test}, max_value=args.max_value)
    except TooFewQuestions as e:
        fail(str(e))
    for split, rows in (("train", train), ("test", test)):
        path = os.path.join(args.out_dir, f"{split}.jsonl")
        write_jsonl(path, rows)
        print(f"synthetic/{split}: {len(rows):,} problems, gaps {sorted(set(gaps))} -> {path}")


if __name__ == "__main__":
    from common import run_main
    run_main(main)
