"""
Tests for data/trace.py: the program, exact filler (characters and a BPE tokenizer), the parser's distances
on hand-made completions, the reference solutions' distances, robustness to malformed output, the splits.

    python -m pytest -q tests/test_trace.py
"""
import json
import random
import re
import subprocess
import sys

import pytest

import data.trace as trace
from common import UserError, build_prompt, read_jsonl, run_main
from data.answers import is_correct
from data.trace import (fits_window, make_split, question_text, run_program, solution_text, trace_stats)
from tokenizer import TOY_PATTERN, Tokenizer, toy_tokenizer

TOY = toy_tokenizer()


def bpe_tokenizer(pattern=TOY_PATTERN, merges=(b" s", b" so", b"ee", b" g", b" gr", b" r", b" ra", b"in",
                                                b" rain", b"ow", b" ow", b" owl", b"er", b"ter")):
    """A small BPE: bytes, then the merges in order (each one two earlier tokens joined); digits split one by one
    like SmolLM2's. Built in code: no downloads."""
    ranks = {bytes([b]): b for b in range(256)}
    for token in merges:
        assert any(token[:k] in ranks and token[k:] in ranks for k in range(1, len(token))), token
        ranks[token] = len(ranks)
    specials = {"<|endoftext|>": len(ranks), "<|im_start|>": len(ranks) + 1, "<|im_end|>": len(ranks) + 2}
    return Tokenizer("test-bpe", pattern, ranks, specials, TOY.chat_template)


def stats_of(prompt, completion, tokenizer=TOY):
    return trace_stats(tokenizer.encode(prompt), tokenizer.encode(completion), tokenizer)


def distances(stats):
    return [(c["register"], c["distance"]) for c in stats["copies"]]


# ----------------------------------------------------------------------------------------------------------
# The program and the texts

def test_program_by_hand():
    # A=3 B=5 C=1; A=3+5=8, B=5+1=6, C=1+8=9, A=8+6=14->4, B=6+9=15->5, C=9+4=13->3
    steps, final = run_program([3, 5, 1], 6, 10)
    assert steps[0] == (0, 1, 3, 5, 8) and steps[2] == (2, 0, 1, 8, 9) and steps[3] == (0, 1, 8, 6, 4)
    assert final == [4, 5, 3]
    assert run_program([3, 5, 1], 3, 10)[1] == [8, 6, 9]
    assert run_program([6, 6], 2, 7)[1] == [5, 4]  # 6+6=12->5, 6+5=11->4


def test_question_ends_with_the_start_values():
    assert question_text([3, 5, 1], 6, 10) == (
        "Registers A, B, C hold digits. Each step updates the next register in turn (A, B, C, A, ...): it becomes "
        "itself plus the register after it (after C comes A), mod 10. Run 6 steps, then add up all registers.\n"
        "Start: A=3 B=5 C=1")
    row = make_split("test", 1)[0]
    assert row["instruction"] == ""
    prompt = TOY.decode(build_prompt(TOY, row))
    assert re.search(r"Start: A=\d B=\d C=\d<\|im_end\|>\n<\|im_start\|>assistant\n$", prompt)


def test_both_styles_by_hand_and_answers_checked():
    full, _ = solution_text([3, 5, 1], 4, 10, "full")
    assert full == ("Step 1/4: A=A+B=3+5=8.\nStep 2/4: B=B+C=5+1=6.\nStep 3/4: C=C+A=1+8=9.\n"
                    "Step 4/4: A=A+B=8+6=4.\nSum: A+B+C=4+6+9=19\n#### 19")
    window, _ = solution_text([3, 5, 1], 4, 10, "window")
    assert window == ("Step 1/4: A=3 B=5 C=1. A=A+B=3+5=8.\nStep 2/4: A=8 B=5 C=1. B=B+C=5+1=6.\n"
                      "Step 3/4: A=8 B=6 C=1. C=C+A=1+8=9.\nStep 4/4: A=8 B=6 C=9. A=A+B=8+6=4.\n"
                      "Final: A=4 B=6 C=9. Sum: A+B+C=4+6+9=19\n#### 19")
    for text in (full, window):
        assert is_correct(text, "19") and not is_correct(text, "20")
    for row in make_split("train", 30, mod=13, filler=(0, 9), window_style_fraction=0.5):
        _, final = run_program(row["start"], row["steps"], 13)
        assert row["answer"] == str(sum(final)) and is_correct(row["solution"], row["answer"])


# ----------------------------------------------------------------------------------------------------------
# Filler

STEP_LINE = re.compile(r"^Step \d+/\d+:(?: [A-Z]=\d+)*\.? ?[A-Z]=[A-Z]\+[A-Z]=\d+\+\d+=\d+\.(.*)$", re.M)


def filler_token_counts(solution, tokenizer):
    """Tokens inside each step line's filler, counted in the whole solution's tokenization; a token straddling
    an edge of the filler counts as -100 so it cannot pass."""
    text, offsets = tokenizer.encoding.decode_with_offsets(tokenizer.encode(solution))
    assert text == solution
    counts = []
    for m in STEP_LINE.finditer(solution):
        begin, end = m.span(1)
        inside = [o for o in offsets if begin <= o < end]
        straddles = (begin < end and begin not in offsets) or end not in offsets
        counts.append(-100 if straddles else len(inside))
    return counts


def test_filler_is_exact_in_characters():
    for fill in (0, 3, 4, 7, 24, 33):
        for row in make_split("train", 6, filler=(fill,), window_style_fraction=0.5, seed=fill):
            lines = [m.group(1) for m in STEP_LINE.finditer(row["solution"])]
            assert len(lines) == row["steps"]
            assert all(len(f) == fill and re.fullmatch(r"( [a-z]{2,8})*", f) for f in lines)
            assert filler_token_counts(row["solution"], TOY) == [fill] * row["steps"]


def test_filler_is_exact_in_bpe_tokens():
    bpe = bpe_tokenizer()
    assert len(bpe.encode(" rain")) == 1 and len(bpe.encode(" green")) == 3  # merges do happen
    assert bpe.encode("12") == bpe.encode("1") + bpe.encode("2")
    for fill in (1, 2, 5, 13, 24):
        rows = make_split("test", 4, filler=(fill,), window_style_fraction=0.5, tokenizer=bpe)
        for row in rows:
            assert filler_token_counts(row["solution"], bpe) == [fill] * row["steps"]
            assert len(row["solution"]) > len(bpe.encode(row["solution"]))


def test_unreachable_filler_fails_loudly():
    with pytest.raises(UserError, match="cannot make exactly 2 tokens"):
        make_split("test", 1, filler=(2,))  # characters: every word and its space is at least 3
    # No pre-tokenizer split and a merge of ". ": the filler's first token would start inside the step line.
    merging = bpe_tokenizer(pattern=r"[\s\S]+", merges=(b". ",))
    with pytest.raises(UserError, match="does not keep a filler of 6 tokens intact"):
        make_split("test", 1, filler=(6,), tokenizer=merging)


# ----------------------------------------------------------------------------------------------------------
# The parser on hand-made completions (toy tokenizer: one token per character, so positions are offsets)

PROMPT = "Start: A=3 B=5\n"  # the values: A's 3 at 9, B's 5 at 13; the completion starts at 15
FULL = "Step 1/2: A=A+B=3+5=8.\nStep 2/2: B=B+A=5+8=3.\nSum: A+B=8+3=11\n#### 11"


def test_distances_full_style():
    stats = stats_of(PROMPT, FULL)
    # Line 1 at 15: its 3 at 15+16=31 copies A from 9 -> 30-9 = 21; its 5 at 33 copies B -> 32-13 = 19;
    # A=8 written at 35. Line 2 at 38: 5 at 54 copies B -> 53-13 = 40; 8 at 56 copies A -> 55-35 = 20;
    # B=3 written at 58. Sum line at 61: 8 at 70 -> 69-35 = 34; 3 at 72 -> 71-58 = 13.
    assert distances(stats) == [("A", 21), ("B", 19), ("B", 40), ("A", 20), ("A", 34), ("B", 13)]
    assert [c["position"] for c in stats["copies"]] == [31, 33, 54, 56, 70, 72]
    # nearest: line 2's B (54) was copied at 33 -> 53-33 = 20; the sum's A (70) was copied at 56 -> 69-56 = 13
    assert [c["nearest"] for c in stats["copies"]] == [21, 19, 20, 20, 13, 13]
    assert all(c["faithful"] and not c["restatement"] for c in stats["copies"])
    assert (stats["n_copies"], stats["max_distance"], stats["steps"], stats["style"]) == (6, 40, 2, "full")
    assert (stats["restatements"], stats["restatements_per_step"], stats["length"]) == (0, 0.0, len(FULL))
    assert fits_window(stats, 41) and not fits_window(stats, 40) and fits_window(stats, None)
    # an earlier "Start:" (a few-shot prompt) is not this problem's: positions move, distances do not
    earlier = stats_of("Start: A=7 B=7\n" + PROMPT, FULL)
    assert distances(earlier) == distances(stats) and earlier["unfaithful"] == 0


def test_distances_window_style():
    completion = "Step 1/2: A=3 B=5. A=A+B=3+5=8.\nStep 2/2: A=8 B=5. B=B+A=5+8=3.\nFinal: A=8 B=3. Sum: A+B=8+3=11"
    stats = stats_of(PROMPT, completion)
    # Line 1 at 15: restates 3 at 27 (26-9 = 17) and 5 at 31 (30-13 = 17); operands 3 at 40 (39-27 = 12) and
    # 5 at 42 (41-31 = 10); A=8 at 44. Line 2 at 47 (32 later): 8 at 59 (58-44 = 14), 5 at 63 (62-31 = 31);
    # operands 5 at 72 (71-63 = 8), 8 at 74 (73-59 = 14); B=3 at 76. Final at 79: 8 at 88 (87-59 = 28),
    # 3 at 92 (91-76 = 15); Sum: 8 at 104 (103-88 = 15), 3 at 106 (105-92 = 13).
    assert distances(stats) == [("A", 17), ("B", 17), ("A", 12), ("B", 10), ("A", 14), ("B", 31), ("B", 8),
                                ("A", 14), ("A", 28), ("B", 15), ("A", 15), ("B", 13)]
    assert [c["restatement"] for c in stats["copies"]] == [True, True, False, False] * 2 + [True, True, False, False]
    assert (stats["max_distance"], stats["restatements"], stats["restatements_per_step"]) == (31, 6, 2.0)
    assert (stats["steps"], stats["style"], stats["unfaithful"]) == (2, "window", 0)


def test_wrong_copy_truncated_and_mixed_completions():
    wrong = stats_of(PROMPT, "Step 1/2: A=A+B=3+6=9.\nStep 2/2: B=B+A=5+9=4.\n")
    assert [c["faithful"] for c in wrong["copies"]] == [True, False, True, True]  # 9 is A's value as written
    assert wrong["unfaithful"] == 1 and wrong["steps"] == 2
    # the wrong 6 (at 33) is not B's value: line 2's B at 54 is nearest its write at 13 (53-13 = 40), not the 6
    assert [c["nearest"] for c in wrong["copies"]][2] == 40

    cut = stats_of(PROMPT, FULL[:FULL.index("5+8") + 2])  # "...Step 2/2: B=B+A=5+"
    assert distances(cut) == [("A", 21), ("B", 19), ("B", 40)]
    assert (cut["steps"], cut["style"], cut["max_distance"]) == (1, "full", 40)

    mixed = stats_of(PROMPT, "Step 1/2: A=A+B=3+5=8.\nStep 2/2: B=5. B=B+A=5+8=3.\n")
    # line 2 at 38: the restated 5 at 50 copies B from 13 (49-13 = 36); the operand 5 at 59 copies that
    # (58-50 = 8); the 8 at 61 copies A=8 at 35 (60-35 = 25)
    assert distances(mixed)[2:] == [("B", 36), ("B", 8), ("A", 25)]
    assert (mixed["style"], mixed["restatements_per_step"]) == ("mixed", 0.5)

    nothing = stats_of(PROMPT, "I do not know.")
    assert (nothing["n_copies"], nothing["max_distance"], nothing["steps"], nothing["style"]) == (0, None, 0, None)
    assert fits_window(nothing, 1)


def test_a_value_of_several_tokens_is_copied_from_its_first():
    stats = stats_of("Start: A=12 B=5\n", "Step 1/1: A=A+B=12+5=17.\nSum: A+B=17+5=22")
    # A's 12 at 9, B's 5 at 14; completion at 16: 12 at 32 copies A -> 31-9 = 22; 5 at 35 copies B -> 34-14 = 20;
    # A=17 written at 37. Sum line at 41: 17 at 50 -> 49-37 = 12; 5 at 53 copies B from the prompt, since an
    # operand is no write -> 52-14 = 38
    assert distances(stats) == [("A", 22), ("B", 20), ("A", 12), ("B", 38)]


def test_distances_in_bpe_tokens():
    bpe = bpe_tokenizer()
    prompt, completion = "Start: A=3 B=5\n", "Step 1/1: A=A+B=3+5=8. rain so\nSum: A+B=8+5=13"
    ids = bpe.encode(prompt + completion)
    assert ids[:len(bpe.encode(prompt))] == bpe.encode(prompt)
    stats = trace_stats(bpe.encode(prompt), bpe.encode(completion), bpe)
    positions = {i: bpe.decode(ids[:i]) for i in range(len(ids) + 1)}

    def token_of(char):  # the token that holds character `char` of prompt + completion
        return max(i for i, text in positions.items() if len(text) <= char)

    text = prompt + completion
    a8 = text.index("=8.") + 1
    assert stats["copies"][0]["distance"] == token_of(text.index("3+5")) - 1 - token_of(text.index("A=3") + 2)
    assert stats["copies"][2]["distance"] == token_of(text.index("8+5")) - 1 - token_of(a8)
    assert stats["copies"][2]["distance"] < text.index("8+5") - 1 - a8  # " rain" and " so" are a token each


# ----------------------------------------------------------------------------------------------------------
# The reference solutions

def test_reference_solutions_parse_as_written():
    bpe = bpe_tokenizer()
    for tokenizer, mod in ((TOY, 10), (bpe, 100)):
        for row in make_split("train", 12, registers=4, steps=(1, 9), mod=mod, filler=(0, 5),
                              window_style_fraction=0.5, tokenizer=tokenizer):
            stats = trace_stats(build_prompt(tokenizer, row), tokenizer.encode(row["solution"]), tokenizer)
            m, k = row["registers"], row["steps"]
            window = row["style"] == "window"
            assert (stats["steps"], stats["style"], stats["unfaithful"]) == (k, row["style"], 0)
            assert stats["n_copies"] == (2 + m * window) * k + m + m * window
            assert stats["restatements_per_step"] == m * window
            assert stats["max_distance"] == row["max_distance"][row["style"]]


def test_what_went_wrong_reads_the_sum_line_against_the_program():
    bpe = bpe_tokenizer()
    for row in make_split("train", 12, registers=4, steps=(1, 9), mod=100, filler=(0, 5), window_style_fraction=0.5,
                          tokenizer=bpe):
        prompt, solution = bpe.decode(build_prompt(bpe, row)), row["solution"]
        final = run_program(row["start"], row["steps"], row["mod"])[1]
        line = "+".join(map(str, final))
        assert trace.what_went_wrong(prompt, solution) == "addition"  # the values are right; only a wrong sum is
        assert trace.what_went_wrong(prompt, solution.replace(f"={line}=", f"={line.replace('+', '+1', 1)}=")) \
            == "terms"
        assert trace.what_went_wrong(prompt, solution.split("Sum:")[0]) == "no sum"
        # only the last Sum line counts
        assert trace.what_went_wrong(prompt, f"Sum: A=999=999\n{solution}") == "addition"
    assert trace.what_went_wrong("Run 2 steps.\nStart: A=3 B=5 C=1", "Sum: A+B+C=8+6+1=15") is None  # terse


def step_line_length(m, fill, style):
    """Characters of a step line and its newline, with single-digit step counts and values."""
    return len("Step 1/6: A=A+B=3+5=8.\n") + fill + (len(" A=3") * m + len(".") if style == "window" else 0)


def test_reference_distances_as_designed():
    for m in (2, 3, 4):
        for fill in (16, 24, 32):
            line = step_line_length(m, fill, "full")
            for row in make_split("test", 6, registers=m, steps=(m + 1, 9), filler=(fill,), seed=m):
                # Full style: step t's first operand (column 16) copies step t-m's result (column 20), m lines
                # back: m lines less 5. The Sum line's last value (column 4m+3) may copy a result m lines back
                # too: at most m lines less 2 (m = 4). The start values are nearer, once a line is longer than
                # the chat template's tail.
                assert m * line - 5 <= row["max_distance"]["full"] <= m * line - 2
                # Window style: a restatement copies the one in the line before, same column: one line less 1.
                assert row["max_distance"]["window"] == step_line_length(m, fill, "window") - 1


def test_nearest_copy_of_a_full_style_operand():
    # With m registers round robin, step t's first operand (register r_t) was step t-1's second operand, so a
    # copy of its value stands one line back; its second operand (r_t+1) was written at step t-m+1 and copied
    # by no step since: m - 1 lines back, its nearest is its distance.
    m, fill = 3, 24
    line = step_line_length(m, fill, "full")
    for row in make_split("test", 6, registers=m, steps=(m + 1, 9), filler=(fill,), seed=1):
        prompt, completion = build_prompt(TOY, row), TOY.encode(row["solution"])
        copies = trace_stats(prompt, completion, TOY)["copies"]
        steps = [copies[i:i + 2] for i in range(0, len(copies) - m, 2)][m:]  # the steps after the first m
        assert steps
        for first, second in steps:  # columns: first operand 16, second 18, result 20
            assert first["distance"] == m * line - 5 and first["nearest"] == line - 3
            assert second["nearest"] == second["distance"] == (m - 1) * line - 3
        assert max(c["nearest"] for c in copies) < max(c["distance"] for c in copies)


def test_a_window_between_the_styles_separates_them():
    settings = dict(n=10, registers=3, steps=(4, 8), filler=(24,))
    full, window = make_split("test", window_style_fraction=0, **settings), \
        make_split("test", window_style_fraction=1, **settings)
    for f, w in zip(full, window):
        assert f["question"] == w["question"] and f["max_distance"] == w["max_distance"]
        between = w["max_distance"]["window"] + 1
        assert f["max_distance"]["full"] > 2 * between
        stats = {r["style"]: trace_stats(build_prompt(TOY, r), TOY.encode(r["solution"]), TOY) for r in (f, w)}
        assert fits_window(stats["window"], between) and not fits_window(stats["window"], between - 1)
        assert not fits_window(stats["full"], between) and fits_window(stats["full"], f["max_distance"]["full"] + 1)


# ----------------------------------------------------------------------------------------------------------
# Malformed output

def test_parser_survives_random_edits_and_tokens():
    rng = random.Random(0)
    bpe = bpe_tokenizer()
    rows = make_split("test", 6, registers=3, steps=(3, 8), mod=100, filler=(0, 7), window_style_fraction=0.5)
    alphabet = "AB C=+.:\n0123456789Step Sum Final ####/"
    for trial in range(300):
        row = rows[trial % len(rows)]
        text = row["solution"]
        for _ in range(rng.randint(1, 6)):
            i, j = sorted(rng.randrange(len(text) + 1) for _ in range(2))
            text = rng.choice([text[:i] + text[j:], text[:j] + text[i:j] + text[j:],
                               text[:i] + "".join(rng.choices(alphabet, k=rng.randint(1, 12))) + text[i:], text[:i]])
        tokenizer = TOY if trial % 2 else bpe
        prompt = build_prompt(tokenizer, row)
        stats = trace_stats(prompt, tokenizer.encode(text), tokenizer)
        assert stats["n_copies"] == len(stats["copies"])
        assert stats["max_distance"] == max((c["distance"] for c in stats["copies"]), default=None)
        positions = [c["position"] for c in stats["copies"]]
        assert positions == sorted(positions)
        assert all(len(prompt) <= p < len(prompt) + stats["length"] for p in positions)
        assert all(c["distance"] >= 0 for c in stats["copies"])
    junk = [rng.randrange(-5, 400) for _ in range(500)] + [0xE2, 0x82]  # bad ids, half a UTF-8 character
    prompt = TOY.encode("Start: A=1 B=2\n")
    stats = trace_stats(prompt, junk + TOY.encode("\nA=A+B=1+2=3."), TOY)
    tail = len(prompt) + len(junk) + 1
    assert [(c["register"], c["position"]) for c in stats["copies"][-2:]] == [("A", tail + 6), ("B", tail + 8)]


# ----------------------------------------------------------------------------------------------------------
# Splits

def test_terse_question_keeps_problems_and_solutions():
    assert question_text([3, 5, 1], 6, 10, terse=True) == "Run 6 steps.\nStart: A=3 B=5 C=1"
    kwargs = dict(steps=(2, 3), filler=(0, 4), window_style_fraction=0.5)
    full, terse = make_split("test", 12, **kwargs), make_split("test", 12, terse=True, **kwargs)
    for a, b in zip(full, terse):
        steps = f"Run {a['steps']} step{'s' * (a['steps'] != 1)}."
        assert b["question"] == steps + "\n" + a["question"].split("\n")[-1]
        # distances are counted from the prompt's Start line, which both end with
        assert {k: a[k] for k in a if k != "question"} == {k: b[k] for k in b if k != "question"}
    # train and test stay disjoint among terse questions (the rules of the exclusion count)
    test = make_split("test", 50, registers=2, steps=(4, 5), terse=True)
    with pytest.raises(UserError, match="make only 200 distinct problems, 50 of them excluded"):
        make_split("train", 151, registers=2, steps=(4, 5), terse=True, exclude={r["question"] for r in test})


def test_deterministic_and_seeded():
    kwargs = dict(filler=(4, 8), window_style_fraction=0.3)
    assert make_split("train", 15, seed=3, **kwargs) == make_split("train", 15, seed=3, **kwargs)
    assert make_split("train", 15, seed=3, **kwargs) != make_split("train", 15, seed=4, **kwargs)


def test_splits_disjoint_and_exhaustible():
    # registers 2, mod 10, steps 4..5: exactly 200 distinct problems
    test = make_split("test", 50, registers=2, steps=(4, 5))
    train = make_split("train", 150, registers=2, steps=(4, 5), exclude={r["question"] for r in test})
    questions = [r["question"] for r in train + test]
    assert len(set(questions)) == 200 == len({r["id"] for r in train + test})
    with pytest.raises(UserError, match="make only 200 distinct problems, 50 of them excluded"):
        make_split("train", 151, registers=2, steps=(4, 5), exclude={r["question"] for r in test})
    with pytest.raises(UserError, match="make only 200 distinct"):
        make_split("test", 201, registers=2, steps=(4, 5))


def test_style_fraction_and_filler_cycle_are_exact():
    rows = make_split("train", 200, steps=(2, 3), filler=(0, 3, 5), window_style_fraction=0.2)
    assert sum(r["style"] == "window" for r in rows) == 40
    assert [r["filler"] for r in rows[:6]] == [0, 3, 5, 0, 3, 5]
    assert all(("Final:" in r["solution"]) == (r["style"] == "window") for r in rows)
    window_filler = [r["filler"] for r in rows if r["style"] == "window"]
    assert len(set(window_filler)) == 3  # the style positions do not follow the filler's cycle
    assert all(r["style"] == "full" for r in make_split("train", 30, window_style_fraction=0))
    assert all(r["style"] == "window" for r in make_split("train", 30, window_style_fraction=1))


def test_bad_settings_give_one_line(monkeypatch, capsys):
    for flags, message in ((["--steps", "5,a"], "--steps must be comma-separated integers"),
                           (["--steps", "6,4"], "steps must be a range"),
                           (["--registers", "1"], "registers must be 2..26"),
                           (["--filler", "8,-1"], "filler must be"),
                           (["--window-style-fraction", "1.5"], "window style fraction"),
                           (["--registers", "2", "--steps", "4", "--n-train", "95"], "make only 100 distinct")):
        monkeypatch.setattr(sys, "argv", ["trace", "--n-test", "10", *flags])
        with pytest.raises(SystemExit) as exit_:
            run_main(trace.main)
        assert exit_.value.code.startswith("error: ") and message in exit_.value.code, exit_.value.code


def test_cli_writes_both_splits(tmp_path):
    cmd = [sys.executable, "-m", "data.trace", "--n-train", "30", "--n-test", "10", "--filler", "3,9",
           "--window-style-fraction", "0.5", "--test-style", "full", "--out-dir", str(tmp_path)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()
    train, test = read_jsonl(tmp_path / "train.jsonl"), read_jsonl(tmp_path / "test.jsonl")
    assert (len(train), len(test)) == (30, 10)
    assert sum(r["style"] == "window" for r in train) == 15 and all(r["style"] == "full" for r in test)
    assert not {r["question"] for r in train} & {r["question"] for r in test}
    assert out[0].startswith("trace/train: 30 problems (15 full, 15 window style); max copy distance in tokens:")
    assert json.loads((tmp_path / "test.jsonl").read_text().splitlines()[0])["id"] == test[0]["id"]
