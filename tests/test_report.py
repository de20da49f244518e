"""
Tests for analysis/report.py on fabricated runs in a temporary directory (base/, sa-*, swa64-*, swa128-*, eval/):
the table's rows and cells, the gap recovered by RL including the undefined case, what each plot shows and that
it is a PNG matplotlib reads back, the report without matplotlib, and the trajectory numbers on a hand-made
completion.

    python -m pytest -q tests/test_report.py
"""

import builtins
import json
import math
import os

import matplotlib.colors
import matplotlib.image
import numpy as np
import pytest

from analysis import report
from common import INSTRUCTION, UserError, build_prompt
from tokenizer import toy_tokenizer

# a question with the numbers 12 and 7; the instruction's 42 is not a question number
QUESTION = "Tom has 12 apples and buys 7 more. How many apples does he have?"
# the layout of records made before the instruction moved ahead of the question: their trajectories are still read
PROMPT = f"<|im_start|>user\n{QUESTION}\n\n{INSTRUCTION}<|im_end|>\n<|im_start|>assistant\n"
RESTATES = "Tom has 12 apples. 12 + 7 = 19\n#### 19"  # right, restates 12 before computing
NO_RESTATE = "12 + 7 = 20\n#### 20"  # wrong, computes straight from the question


def toy_tokens(text):
    """Token count under the byte-level toy tokenizer: one per byte, one per special token."""
    return len(text) - 11 * text.count("<|im_start|>") - 9 * text.count("<|im_end|>")


def task(acc, length=20.0, n=10, **more):
    return {"n_problems": n, "accuracy": acc, "mean_completion_tokens": length, "generated_tokens": 200,
            "tokens_per_s": 100.0, "truncated": 0.0, **more}


def entry(tasks, tokens_per_s=1000.0, memory=0.5):
    return {"tasks": tasks, "tokens_per_s": tokens_per_s, "peak_memory_gb": memory}


def record(problem_id, completion, correct):
    return {"id": problem_id, "prompt": PROMPT, "reference": "19",
            "completions": [completion], "answers": [completion.rsplit(" ", 1)[1]], "correct": [correct],
            "completion_tokens": [len(completion)], "finished": [True], "settings": {}}


def fabricate(tmp_path, sa_sft=0.8, swa64_sft=0.3, swa64_rl=0.55):
    run = tmp_path / "run"
    summary = {
        "base-windowNone-sinks0": entry({"gsm8k": task(0.5, parsed=0.9, truncated=0.1),
                                         "svamp": task(0.4, 40.0, parsed=0.7, truncated=0.3)}),
        "base-window64-sinks0": entry({"gsm8k": task(0.1)}, 1200.0, 0.4),
        "base-window128-sinks0": entry({"gsm8k": task(0.2)}, 1100.0, 0.4),
        "sa-sft": entry({"gsm8k": task(sa_sft, 30.0)}, 900.0, 0.6),
        "sa-rl": entry({"gsm8k": task(0.9)}, 950.0, 0.6),
        "sa-sft-window64-sinks0": entry({"gsm8k": task(0.3)}, 1500.0, 0.3),
        "swa64-sft": entry({"gsm8k": task(swa64_sft)}, 1500.0, 0.3),
        "swa64-rl": entry({"gsm8k": task(swa64_rl)}, 1600.0, 0.3),
        "swa64-rl-seed1": entry({"gsm8k": task(0.6)}, 1600.0, 0.3),
        "swa128-sft": entry({"gsm8k": task(sa_sft)}, 1400.0, 0.35),
        "swa128-rl": entry({"gsm8k": task(0.85)}, 1450.0, 0.35),
    }
    (run / "eval").mkdir(parents=True)
    (run / "eval" / "summary.json").write_text(json.dumps(summary))
    (run / "base").mkdir()
    (run / "base" / "config.json").write_text(json.dumps({"window": None}))
    toy_tokenizer().save(run / "base")
    for name, window in (("sa-sft", None), ("sa-rl", None), ("swa64-sft", 64), ("swa64-rl", 64), ("swa128-sft", 128),
                         ("swa128-rl", 128), ("swa64-rl-seed1", 64)):
        (run / name).mkdir()
        (run / name / "config.json").write_text(json.dumps({"window": window}))
        if "-rl" in name:
            lines = [{"step": s, "reward": 0.1 * s + (window or 0) / 1000, "accuracy": 0.1 * s,
                      "completion_len_mean": 50.0 - s} for s in (1, 2, 3, 4)]
            for m in lines[1::2]:  # held-out accuracy on every other step
                m.update(eval_accuracy=0.4 + m["step"] / 20, eval_task="gsm8k")
            (run / name / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
    # per-problem records: p1 is fixed by RL at both windows; p2 is missing from SA-SFT, so it is left out
    records = {"sa-sft": [record("p1", RESTATES, True)], "sa-rl": [record("p1", RESTATES, True)],
               "swa64-sft": [record("p1", NO_RESTATE, False), record("p2", NO_RESTATE, False)],
               "swa64-rl": [record("p1", RESTATES, True), record("p2", RESTATES, True)],
               "swa128-sft": [record("p1", NO_RESTATE, False)], "swa128-rl": [record("p1", RESTATES, True)]}
    for label, rows in records.items():
        (run / "eval" / label).mkdir()
        (run / "eval" / label / "gsm8k.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def section(text, title):
    return text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def table_rows(text):
    return [line for line in text.splitlines() if line.startswith("| ")]


def test_table(tmp_path):
    run = fabricate(tmp_path)
    report.main([str(run)])
    text = (run / "REPORT.md").read_text()
    rows = table_rows(text.split("\n## ", 1)[0])
    assert rows[0].startswith("| attention | window | stage | checkpoint | gsm8k accuracy (%) | svamp accuracy (%) |")
    assert [r.split(" | ")[3] for r in rows[1:]] == [
        "base-windowNone-sinks0", "sa-sft", "sa-rl", "base-window64-sinks0", "sa-sft-window64-sinks0", "swa64-sft",
        "swa64-rl", "swa64-rl-seed1", "base-window128-sinks0", "swa128-sft", "swa128-rl"]
    # accuracy ± sqrt(p(1-p)/n), n = 10; mean completion tokens, parsed and truncated averaged over tasks:
    # (20 + 40) / 2, (90 + 70) / 2, (10 + 30) / 2; no parse rate recorded: "-"
    assert rows[1] == ("| SA (full) | full | before SFT | base-windowNone-sinks0 | 50.0 ± 15.8 | 40.0 ± 15.5 | 30.0 "
                       "| 80.0 | 20.0 | 1000 | 0.50 |")
    assert rows[2] == "| SA (full) | full | SFT | sa-sft | 80.0 ± 12.6 | - | 30.0 | - | 0.0 | 900 | 0.60 |"
    assert rows[5] == ("| SWA | 64 | SFT (trained at full) | sa-sft-window64-sinks0 | 30.0 ± 14.5 | - | 20.0 | - "
                       "| 0.0 | 1500 | 0.30 |")
    assert rows[7] == "| SWA | 64 | SFT + RL | swa64-rl | 55.0 ± 15.7 | - | 20.0 | - | 0.0 | 1600 | 0.30 |"
    assert rows[9] == ("| SWA | 128 | before SFT | base-window128-sinks0 | 20.0 ± 12.6 | - | 20.0 | - | 0.0 | 1100 "
                       "| 0.40 |")
    assert "not in the table" not in text  # another seed is a row of its own
    rl = table_rows(section(text, "RL"))
    assert [r.split(" | ")[0] for r in rl[1:]] == ["| sa-rl", "| swa64-rl", "| swa64-rl-seed1", "| swa128-rl"]
    assert rl[1] == "| sa-rl | 4 | 0.100 -> 0.400 | 0.100 -> 0.400 | 0.500 -> 0.600 | 49.0 -> 46.0 |"


def test_gap(tmp_path):
    run = fabricate(tmp_path)
    report.main([str(run)])
    rows = table_rows(section((run / "REPORT.md").read_text(), "Gap recovered by RL"))
    # (0.55-0.3)/(0.8-0.3); RL fixed both problems swa64-sft got wrong
    assert rows[1] == "| 64 | gsm8k | 80.0 ± 12.6 | 30.0 ± 14.5 | 55.0 ± 15.7 | 0.500 | +100.0 ± 0.0 (2 fixed, 0 broken) | - |"
    assert rows[2] == "| 64 | svamp | - | - | - | undefined | - | - |"
    assert rows[3].startswith("| 128 | gsm8k | 80.0 ± 12.6 | 80.0 ± 12.6 | 85.0 ± 11.3 | undefined |")  # no gap
    # a run without the trace task gets the per-seed experiment on its math task: on p1, the one problem all four
    # models answered, SA 1 -> 1 and SWA-64 0 -> 1 (no sampled records: no fits)
    text = (run / "REPORT.md").read_text()
    experiment = section(text, "The experiment: does RL close the window's gap? (gsm8k)")
    assert "| 0 | 1 | 100.0 | 100.0 | 0.0 | 100.0 | 100.0 | 0.0 | 1.000 | 1.000 | - | - |" in experiment
    # each math benchmark gets its own section; svamp has no RL arm's records, so none
    assert "does RL close the window's gap? (svamp)" not in text


def test_rl_on_both_arms(tmp_path):
    run = fabricate(tmp_path)
    report.main([str(run)])
    rows = table_rows(section((run / "REPORT.md").read_text(), "RL on both arms"))
    # SA 80 -> 90, SWA-64 30 -> 55: the gap goes from 50 to 35 points; SA's records have p1 right both times,
    # so on p1, the one problem all four answered, RL changed the gap by 0 - 1
    assert rows[1] == ("| 64 | gsm8k | 80.0 -> 90.0 | +0.0 ± 0.0 | 30.0 -> 55.0 | +100.0 ± 0.0 | 50.0 | 35.0 "
                       "| -100.0 ± 0.0 |")
    assert rows[2] == "| 64 | svamp | - -> - | - | - -> - | - | - | - | - |"
    assert rows[3] == ("| 128 | gsm8k | 80.0 -> 90.0 | +0.0 ± 0.0 | 80.0 -> 85.0 | +100.0 ± 0.0 | 0.0 | 5.0 "
                       "| -100.0 ± 0.0 |")


def test_paired_gap_change(tmp_path):
    verdicts = {"sa-sft": [1, 0, 1, 0, 1], "sa-rl": [1, 1, 1, 0], "swa64-sft": [0, 0, 1, 0, 0],
                "swa64-rl": [1, 0, 0, 0, 1]}  # the fifth problem is missing from sa-rl, so it is left out
    for label, correct in verdicts.items():
        (tmp_path / "eval" / label).mkdir(parents=True)
        rows = [record(f"p{i}", "x = 1", bool(c)) for i, c in enumerate(correct)]
        (tmp_path / "eval" / label / "gsm8k.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # SA gains (0, 1, 0, 0), the window's (1, 0, -1, 0): differences (-1, 1, 1, 0), mean 1/4,
    # standard error sqrt(3 - 1/4) / 4
    change, se = report.paired_gap_change(str(tmp_path), 64, "gsm8k")
    assert change == pytest.approx(0.25) and se == pytest.approx(math.sqrt(2.75) / 4)
    assert report.paired_gap_change(str(tmp_path), 128, "gsm8k") is None


def test_gap_swa_ahead_or_within_noise_is_flagged(tmp_path):
    run = fabricate(tmp_path, sa_sft=0.8, swa64_sft=0.9, swa64_rl=0.85)
    report.main([str(run)])
    row = table_rows(section((run / "REPORT.md").read_text(), "Gap recovered by RL"))[1]
    assert row.startswith("| 64 | gsm8k | 80.0 ± 12.6 | 90.0 ± 9.5 | 85.0 ± 11.3 | 0.500 | +100.0 ± 0.0 (2 fixed, 0 broken) "
                          "| SWA-SFT is not behind")
    assert "within 2 standard errors" in row


def test_paired_gain(tmp_path):
    # 10 problems: 3 fixed, 1 broken, 6 unchanged; one more answered only before RL, which is left out
    run = tmp_path / "run"
    before = [True, False, False, False, True, True, False, False, False, False, True]
    after = [False, True, True, True, True, True, False, False, False, False]
    for label, verdicts in (("swa64-sft", before), ("swa64-rl", after)):
        (run / "eval" / label).mkdir(parents=True)
        (run / "eval" / label / "gsm8k.jsonl").write_text(
            "".join(json.dumps({"id": f"p{i}", "correct": [c]}) + "\n" for i, c in enumerate(verdicts)))
    gain, se, fixed, broken = report.paired_gain(str(run), "swa64-sft", "swa64-rl", "gsm8k")
    assert (fixed, broken) == (3, 1)
    assert gain == pytest.approx(0.2)
    # the same from the per-problem differences d in {-1, 0, 1}: sqrt(n * var(d)) / n with var over n
    d = np.array([-1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    assert se == pytest.approx(np.sqrt(len(d) * d.var()) / len(d))
    assert report.paired_gain(str(run), "swa64-sft", "swa128-rl", "gsm8k") is None


@pytest.mark.parametrize("args, expected", [((0.8, 0.3, 0.55), 0.5), ((0.8, 0.3, 0.3), 0.0),
                                            ((0.8, 0.3, 0.8), 1.0), ((0.5, 0.5, 0.6), None),
                                            ((0.5, None, 0.6), None)])
def test_gap_recovered(args, expected):
    got = report.gap_recovered(*args)
    assert got == pytest.approx(expected) if expected is not None else got is None


def png_image(path):
    """A plot as matplotlib reads it back: (height, width, RGBA) floats in [0, 1]."""
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = matplotlib.image.imread(path)
    assert img.shape == (540, 960, 4)  # 8 x 4.5 inches at 120 dpi
    return img


def has_color(img, color):
    """Whether some pixel is exactly this colour (a marker's inside is; edges are blended with the background)."""
    return bool(np.isclose(img[..., :3], matplotlib.colors.to_rgb(color), atol=0.5 / 255).all(-1).any())


def test_plots(tmp_path, monkeypatch):
    run = fabricate(tmp_path)
    drawn, line_plot = {}, report.line_plot

    def recorded(path, title, series, *args, **kwargs):
        drawn[os.path.basename(path)] = {name: sorted(points) for name, points in series.items()}
        line_plot(path, title, series, *args, **kwargs)

    monkeypatch.setattr(report, "line_plot", recorded)
    report.main([str(run)])
    text = (run / "REPORT.md").read_text()
    # one line per RL arm and seed, SA first; fabricate logs reward 0.1 * step + window / 1000
    assert list(drawn["rl_reward.png"]) == ["sa-rl", "swa64-rl", "swa64-rl-seed1", "swa128-rl"]
    assert drawn["rl_reward.png"] == {arm: [(s, 0.1 * s + window / 1000) for s in (1, 2, 3, 4)]
                                      for arm, window in (("sa-rl", 0), ("swa64-rl", 64), ("swa64-rl-seed1", 64),
                                                          ("swa128-rl", 128))}
    assert drawn["rl_accuracy.png"]["swa64-rl"] == [(s, 0.4 + s / 20) for s in (2, 4)]  # held out, where logged
    assert drawn["rl_length.png"]["swa128-rl"] == [(1, 49.0), (2, 48.0), (3, 47.0), (4, 46.0)]
    assert "![gsm8k accuracy over RL (held out)](rl_accuracy.png)" in text
    # windows 64, 128 and full at x = 0, 1, 2; the SA model run under window 64 is on SA SFT's line
    assert drawn["accuracy_vs_window.png"] == {"base": [(0, 0.1), (1, 0.2), (2, 0.5)],
                                               "SA SFT": [(0, 0.3), (2, 0.8)], "SA SFT+RL": [(2, 0.9)],
                                               "SWA SFT": [(0, 0.3), (1, 0.8)], "SWA SFT+RL": [(0, 0.55), (1, 0.85)]}
    for name, series in drawn.items():
        assert f"]({name})" in text
        img = png_image(run / name)
        # each series in its own colour of matplotlib's cycle, and no more
        assert [has_color(img, f"C{i}") for i in range(len(series) + 1)] == [True] * len(series) + [False], name


def test_report_without_matplotlib(tmp_path, monkeypatch, capsys):
    with_plots = fabricate(tmp_path / "with")
    report.main([str(with_plots)])
    full = (with_plots / "REPORT.md").read_text()
    real_import = builtins.__import__

    def uninstalled(name, *args, **kwargs):
        if name.split(".")[0] == "matplotlib":
            raise ModuleNotFoundError("No module named 'matplotlib'", name="matplotlib")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", uninstalled)
    run = fabricate(tmp_path / "without")
    capsys.readouterr()
    report.main([str(run)])
    said = capsys.readouterr().out.splitlines()
    assert said[-1] == ("plots skipped: matplotlib cannot be imported (No module named 'matplotlib'); "
                        "pip install matplotlib to draw them")
    assert sum("skipped" in line for line in said) == 1
    text = (run / "REPORT.md").read_text()
    assert not list(run.glob("*.png")) and "![" not in text
    # every table and section but the plot-only one, as with matplotlib
    assert table_rows(text) == table_rows(full)
    headings = [line for line in full.splitlines() if line.startswith("#")]
    assert [line for line in text.splitlines() if line.startswith("#")] == [
        h for h in headings if h != "## Accuracy against window"]


def test_question_and_numbers():
    tok = toy_tokenizer()
    assert report.question_text(PROMPT, tok) == QUESTION
    # today's layout, from the prompt that evaluate.py and the trainers build
    prompt = tok.decode(build_prompt(tok, {"id": 1, "question": QUESTION, "answer": "19"}))
    assert prompt.index(INSTRUCTION) < prompt.index(QUESTION) and report.question_text(prompt, tok) == QUESTION
    assert report.question_text(prompt.replace(INSTRUCTION + "\n\n", ""), tok) == QUESTION  # no instruction
    assert report.numbers("1,200 and 7.50 or 3.") == [(0, "1200"), (10, "7.5"), (18, "3")]


def test_trajectory_stats():
    tok = toy_tokenizer()
    start = toy_tokens(PROMPT)  # the completion's first token
    at_12, at_7 = toy_tokens(PROMPT[:PROMPT.index("12")]), toy_tokens(PROMPT[:PROMPT.index(" 7 ") + 1])
    # 12 (restated, back to the question), 12 (back to the restatement, 11 tokens), 7 (back to the question)
    distances, restated = report.trajectory_stats(PROMPT, RESTATES, tok)
    assert distances == [start + 8 - at_12, 11, start + 24 - at_7] and restated
    distances, restated = report.trajectory_stats(PROMPT, NO_RESTATE, tok)
    assert distances == [start - at_12, start + 5 - at_7] and not restated
    # without a tokenizer: characters / 4
    distances, _ = report.trajectory_stats(PROMPT, RESTATES)
    assert distances[1] == (len(PROMPT) + 19) // 4 - (len(PROMPT) + 8) // 4
    # a window of 16 sees only the second use; 64 is still short of the question
    records = {"p1": record("p1", RESTATES, True)}
    assert report.trajectory_row(records, ["p1"], 16, tok) == ["1", "3", "33.3", "66.7", "100.0", "38.0", "100.0"]
    assert start - at_12 > 128


def test_trajectory_section(tmp_path):
    run = fabricate(tmp_path)
    report.main([str(run)])
    text = section((run / "REPORT.md").read_text(), "Trajectories")
    assert "Tokens are counted with base/'s tokenizer." in text
    rows = table_rows(text)
    assert len(rows) == 1 + 8  # header + (sa-sft, sa-rl, swa<W>-sft, swa<W>-rl) for W = 64 and 128
    # p2 is not in sa-sft's records, so each row covers p1 alone: 1 completion
    assert rows[3] == "| 64 | swa64-sft | 1 | 2 | 0.0 | 100.0 | 0.0 | 19.0 | 0.0 |"
    assert rows[4] == "| 64 | swa64-rl | 1 | 3 | 33.3 | 66.7 | 100.0 | 38.0 | 100.0 |"
    examples = section((run / "REPORT.md").read_text(), "Examples: SWA-SFT wrong, SWA-RL right")
    assert "### Window 64: p1 (reference answer 19)" in examples
    assert "swa64-sft (wrong, 19 tokens, 0 of 2 uses within 64):" in examples
    assert "swa64-rl (right, 38 tokens, 1 of 3 uses within 64):" in examples
    assert f"````text\n{RESTATES}\n````" in examples


def test_synthetic_only_run(tmp_path):
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    (run / "base").mkdir()
    summary = {"base-windowNone-sinks0": entry({"synthetic": task(0.5)}), "swa64-sft": entry({"synthetic": task(0.2)}),
               "swa64-rl": entry({"synthetic": task(0.4)})}
    (run / "eval" / "summary.json").write_text(json.dumps(summary))
    (run / "swa64-rl").mkdir()
    (run / "swa64-rl" / "metrics.jsonl").write_text(json.dumps({"step": 1, "reward": 0.5, "accuracy": 0.5}) + "\n")
    report.main([str(run)])
    text = (run / "REPORT.md").read_text()
    assert "![training accuracy over RL (no held-out accuracy logged)](rl_accuracy.png)" in text
    assert "No math benchmark was evaluated (only synthetic)" in text
    assert "rl_length.png" not in text and not (run / "rl_length.png").exists()  # no lengths logged: no plot
    assert has_color(png_image(run / "rl_reward.png"), "C0")  # one step still plots


def test_synthetic_accuracy_by_gap(tmp_path):
    run = tmp_path / "run"
    (run / "base").mkdir(parents=True)
    (run / "data" / "synthetic").mkdir(parents=True)
    gaps = {"a": 15, "b": 16, "c": 66, "d": 70, "e": 260}  # three groups: 15-16, 66-70, 260
    (run / "data" / "synthetic" / "test.jsonl").write_text(
        "".join(json.dumps({"id": i, "gap": g}) + "\n" for i, g in gaps.items()))
    summary = {"sa-sft": entry({"synthetic": task(0.8, n=5)}), "swa64-sft": entry({"synthetic": task(0.4, n=5)})}
    correct = {"sa-sft": {"a": 1, "b": 1, "c": 1, "d": 0, "e": 1}, "swa64-sft": {"a": 1, "b": 0, "c": 0, "d": 0}}
    for label, verdicts in correct.items():
        (run / "eval" / label).mkdir(parents=True)
        (run / "eval" / label / "synthetic.jsonl").write_text(
            "".join(json.dumps({"id": i, "correct": [bool(c)]}) + "\n" for i, c in verdicts.items()))
    (run / "eval" / "summary.json").write_text(json.dumps(summary))
    report.main([str(run)])
    rows = table_rows(section((run / "REPORT.md").read_text(), "Synthetic accuracy by gap"))
    assert rows[0] == "| checkpoint | window | gap 15-16 (%) | gap 66-70 (%) | gap 260 (%) |"
    assert rows[1] == "| sa-sft | full | 100.0 ± 0.0 | 50.0 ± 35.4 | 100.0 ± 0.0 |"
    assert rows[2] == "| swa64-sft | 64 | 50.0 ± 35.4 | 0.0 ± 0.0 | - |"


def test_old_layout_fails_in_one_line(tmp_path):
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    (run / "eval" / "summary.json").write_text("{}")
    with pytest.raises(UserError, match="base/ not found"):
        report.main([str(run)])


def trace_record(problem_id, correct, trajectories):
    return {"id": problem_id, "prompt": "p", "reference": "9", "completions": ["c"] * len(correct), "answers": ["9"],
            "correct": correct, "completion_tokens": [t["length"] for t in trajectories],
            "finished": [True] * len(correct), "settings": {}, "trajectories": trajectories}


def traj(style, fits, distance, restated, length):
    return {"style": style, "fits": fits, "max_distance": distance, "restatements_per_step": restated,
            "length": length, "steps": 4, "n_copies": 8, "unfaithful": 0, "restatements": 0}


def test_trace_section_by_hand(tmp_path):
    run = tmp_path / "trace-run"
    for d in ("base", "sa-sft", "swa64-sft", "swa64-rl"):
        os.makedirs(run / d)
        with open(run / d / "config.json", "w") as f:
            json.dump({"window": None if d.startswith(("base", "sa")) else 64, "sinks": 4}, f)
    summary = {label: entry({"trace": task(0.5, n=2)})
               for label in ("sa-sft", "swa64-sft", "swa64-rl")}
    os.makedirs(run / "eval")
    with open(run / "eval" / "summary.json", "w") as f:
        json.dump(summary, f)
    records = {  # swa64-sft: two full-style completions, one beyond the window; swa64-rl: one of each style
        "swa64-sft": [trace_record("a", [False], [traj("full", False, 120, 0.0, 100)]),
                      trace_record("b", [True], [traj("full", True, 50, 0.0, 80)])],
        "swa64-rl": [trace_record("a", [True], [traj("window", True, 52, 3.0, 130)]),
                     trace_record("b", [True], [traj("full", True, 50, 0.0, 80)])]}
    for label, recs in records.items():
        os.makedirs(run / "eval" / label)
        with open(run / "eval" / label / "trace.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in recs)
    with open(run / "recall.json", "w") as f:
        json.dump({"swa64-sft": {"window": 64, "sinks": 4, "bins": [{"lo": 48, "hi": 63, "copies": 4, "correct": 3},
                                                                     {"lo": 112, "hi": 127, "copies": 2, "correct": 0}]},
                   "sa-sft": {"window": None, "sinks": 0, "bins": [{"lo": 112, "hi": 127, "copies": 5, "correct": 5}],
                              "bins_nearest": [{"lo": 32, "hi": 47, "copies": 5, "correct": 4}]}},
                  f)
    with open(run / "swa64-rl" / "metrics.jsonl", "w") as f:
        for step, fits in ((1, 0.25), (2, 0.75)):
            f.write(json.dumps({"step": step, "reward": 0.5, "accuracy": 0.5, "fits_window": fits,
                                "window_style": fits / 2, "restatements_per_step": fits}) + "\n")
    text = report.build_report(str(run), draw_plots=False)
    # swa64-sft: accuracy 1/2, fits 1/2; accurate when it fits 100%, when not 0%; all full style; no restatements;
    # mean largest distance (120 + 50) / 2 = 85; mean tokens 90
    assert "| swa64-sft | 64 | 2 | 50.0 | 50.0 | 100.0 | 0.0 | 0.0 | 100.0 | 0.0 | 0.00 | 85.0 | 90.0 |" in text
    assert "| swa64-rl | 64 | 2 | 100.0 | 100.0 | 100.0 | - | 50.0 | 50.0 | 0.0 | 1.50 | 51.0 | 105.0 |" in text
    assert "| checkpoint | window | 48-63 | 112-127 |" in text
    assert "| swa64-sft | 64 + 4 sinks | 75.0 | 0.0 |" in text and "| sa-sft | full | - | 100.0 |" in text
    # by the nearest copy: only sa-sft has those bins, so its table has one column and one row
    assert "| checkpoint | window | 32-47 |\n|---|---|---|\n| sa-sft | full | 80.0 |\n" in text
    assert "| swa64-rl | 25.0 -> 75.0 | 12.5 -> 37.5 | 0.25 -> 0.75 |" in text
    assert "### a (answer 9)" in text and "swa64-rl: right, window style, largest copy distance 52, fits" in text


def test_arm_names():
    groups = {name: report.ARM_RE.match(name).groups() for name in
              ("sa-sft", "swa64-rl-seed1", "sa-sft-seed12", "swa64-rl-random", "swa64-sft-more-seed2")}
    assert groups == {"sa-sft": ("sa", None, "sft", None, None),
                      "swa64-rl-seed1": ("swa64", "64", "rl", None, "1"),
                      "sa-sft-seed12": ("sa", None, "sft", None, "12"),
                      "swa64-rl-random": ("swa64", "64", "rl", "random", None),
                      "swa64-sft-more-seed2": ("swa64", "64", "sft", "more", "2")}
    assert report.ARM_RE.match("sa-sft-seed") is not None and report.ARM_RE.match("sa-sft@64") is None


def write_verdicts(run_dir, answered, ids="abcd", task="trace"):
    """eval/<label>/<task>.jsonl with one greedy verdict per problem id, for {label: [0/1 per id]}."""
    for label, correct in answered.items():
        os.makedirs(run_dir / "eval" / label, exist_ok=True)
        with open(run_dir / "eval" / label / f"{task}.jsonl", "w") as f:
            f.writelines(json.dumps({"id": i, "correct": [bool(c)]}) + "\n" for i, c in zip(ids, correct))


def test_seed_runs_finds_every_seed(tmp_path):
    # seeds 0 and 2 have all four arms; seed 1 lacks its SA RL arm; a control's seed is not a seed of the pair
    answered = {"sa-sft": [1, 1], "sa-rl": [1, 1], "swa64-sft": [0, 0], "swa64-rl": [1, 0],
                "sa-sft-seed1": [1, 0], "swa64-sft-seed1": [0, 0], "swa64-rl-seed1": [1, 1],
                "sa-sft-seed2": [1, 1], "sa-rl-seed2": [0, 1], "swa64-sft-seed2": [1, 0], "swa64-rl-seed2": [1, 1],
                "swa64-rl-random-seed3": [0, 0]}
    write_verdicts(tmp_path, answered, ids="ab")
    assert report.seed_runs(str(tmp_path), 64) == {0: [[1, 1], [1, 1], [0, 0], [1, 0]],
                                                   1: [[1, 0], None, [0, 0], [1, 1]],
                                                   2: [[1, 1], [0, 1], [1, 0], [1, 1]]}


def test_experiment_section_with_a_seed_lacking_sa_rl(tmp_path):
    # seed 0: SA 4/4 -> 4/4, SWA 0/4 -> 2/4: closed 0.5, recovered 0.5; seed 1 (no SA RL): SA 4/4, SWA 1/4 -> 4/4:
    # recovered 1.0, no gap closed
    answered = {"sa-sft": [1, 1, 1, 1], "sa-rl": [1, 1, 1, 1], "swa64-sft": [0, 0, 0, 0], "swa64-rl": [1, 1, 0, 0],
                "sa-sft-seed1": [1, 1, 1, 1], "swa64-sft-seed1": [1, 0, 0, 0], "swa64-rl-seed1": [1, 1, 1, 1]}
    write_verdicts(tmp_path, answered)
    os.makedirs(tmp_path / "swa64-rl")
    text = "\n".join(report.experiment_section(str(tmp_path)))
    assert "| 0 | 4 | 100.0 | 100.0 | 0.0 | 50.0 | 100.0 | 50.0 | 0.500 | 0.500 | - | - |" in text
    assert "| 1 | 4 | 100.0 | - | 25.0 | 100.0 | 75.0 | - | - | 1.000 | - | - |" in text
    assert "Gap closed over 1 seed(s): mean 0.500 (one seed: no interval over seeds)" in text
    mean, half = report.t_interval([0.5, 1.0])
    assert f"Recovered over 2 seed(s): mean 0.750, 95% t-interval [{mean - half:.3f}, {mean + half:.3f}]." in text


def test_experiment_statistics_by_hand():
    assert report.gap_closed(0.6, 0.7, 0.2, 0.5) == pytest.approx((0.4 - 0.2) / 0.4)
    assert report.gap_closed(0.5, 0.7, 0.5, 0.5) is None  # no gap after SFT: nothing to close
    mean, half = report.t_interval([0.2, 0.4, 0.6])
    assert mean == pytest.approx(0.4) and half == pytest.approx(4.303 * 0.2 / math.sqrt(3))
    assert report.t_interval([0.3]) == (0.3, None)
    # A = f a + (1 - f) b: before f=0.2, a=0.8, b=0.1 -> 0.24; after f=0.6, a=0.7, b=0.1 -> 0.46
    total, shift, within = report.shift_share((0.2, 0.8, 0.1), (0.6, 0.7, 0.1))
    assert total == pytest.approx(0.46 - 0.24)
    assert shift == pytest.approx(0.4 * (0.75 - 0.1)) and within == pytest.approx(0.4 * -0.1 + 0.6 * 0.0)
    assert shift + within == pytest.approx(total)
    # nothing fitted before: that group's accuracy is taken from after (no change within it)
    total, shift, within = report.shift_share((0.0, None, 0.1), (0.5, 0.9, 0.1))
    assert total == pytest.approx(0.5 - 0.1) and shift == pytest.approx(0.4) and within == pytest.approx(0.0)


def test_bootstrap_gap_closed():
    # SA right on all 40 problems after SFT and RL; SWA right on 20 after SFT and 30 after RL: closed 0.5 exactly
    # when problems are not resampled; resampling spreads it around 0.5
    sa = [1] * 40
    swa_sft, swa_rl = [1] * 20 + [0] * 20, [1] * 30 + [0] * 10
    runs = {0: [sa, sa, swa_sft, swa_rl]}
    lo, hi = report.bootstrap_gap_closed(runs, n_boot=500)
    assert lo < 0.5 < hi and hi - lo < 0.6
    # a seed with no gap after SFT has no defined gap closed and is skipped in each resample
    runs[1] = [sa, sa, sa, sa]
    assert report.bootstrap_gap_closed(runs, n_boot=200) is not None


def test_control_table_by_hand(tmp_path):
    # seed 0: SA 4/4, SWA SFT 0/4, SWA RL 3/4; controls: more SFT 2/4 (one greedy completion of four fits window
    # 64), the non-binding window 3/4 (no trajectories recorded); an oracle of seed 5, whose seed has no SA SFT,
    # gives no row
    write_verdicts(tmp_path, {"sa-sft": [1, 1, 1, 1], "swa64-sft": [0, 0, 0, 0], "swa64-rl": [1, 1, 1, 0],
                              "swa192-sft": [1, 1, 1, 0], "swa64-sft-oracle-seed5": [1, 1, 1, 1]})
    for name, records in {
            "eval": [trace_record(i, [ok], [traj("full", False, d, 0.0, 300)])
                     for i, ok, d in zip("abcd", (True, True, False, False), (100, 50, 100, 100))],
            "eval-sampled": [trace_record("a", [True, False], [traj("window", True, 40, 3.0, 380),
                                                               traj("full", False, 100, 0.0, 300)]),
                             trace_record("b", [True, True], [traj("window", True, 40, 3.0, 380)] * 2)]}.items():
        os.makedirs(tmp_path / name / "swa64-sft-more")
        with open(tmp_path / name / "swa64-sft-more" / "trace.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
    text = "\n".join(report.control_table(str(tmp_path), 64))
    # more: recovered (0.5 - 0) / (1 - 0); gain over SWA SFT d = [1, 1, 0, 0]: 0.5 ± sqrt(2 - 4/4) / 4 = 0.25;
    # SWA RL minus it d = [0, 0, 1, 0]: 0.25 ± sqrt(1 - 1/4) / 4 = 0.2165; sampled 3 of 4 right, 3 of 4 fit
    assert ("| swa64-sft-more | 0 | more SFT, as much compute as RL | 4 | 50.0 | 0.500 | +50.0 ± 25.0 | +25.0 ± 21.7 "
            "| 25.0 | 75.0 | 75.0 |") in text
    # the non-binding window: 3/4, recovered 0.75, gain d = [1, 1, 1, 0]: 0.75 ± sqrt(3 - 9/4) / 4; RL minus it 0
    assert "| swa192-sft | 0 | SFT at window 192 | 4 | 75.0 | 0.750 | +75.0 ± 21.7 | +0.0 ± 0.0 | - | - | - |" in text
    assert "swa64-sft-oracle" not in text
    assert report.control_table(str(tmp_path / "nothing"), 64) == []


def test_experiment_section_per_math_benchmark(tmp_path):
    # the same four arms evaluated on two benchmarks: each gets its own section, titled with its name
    arms = {"sa-sft": [1, 1, 1, 0], "sa-rl": [1, 1, 1, 1], "swa64-sft": [1, 0, 0, 0], "swa64-rl": [1, 1, 0, 0]}
    write_verdicts(tmp_path, arms, task="gsm8k")
    write_verdicts(tmp_path, {**arms, "swa64-rl": [1, 1, 1, 0]}, task="svamp")
    for label in arms:  # report.py finds arms by their checkpoint directories
        os.makedirs(tmp_path / label)
    gsm8k = "\n".join(report.experiment_section(str(tmp_path), "gsm8k"))
    svamp = "\n".join(report.experiment_section(str(tmp_path), "svamp"))
    assert gsm8k.startswith("## The experiment: does RL close the window's gap? (gsm8k)")
    # G after SFT 75 - 25 = 50, after RL 100 - 50 = 50 on gsm8k (closed 0), 100 - 75 = 25 on svamp (closed 0.5)
    assert "| 0 | 4 | 75.0 | 100.0 | 25.0 | 50.0 | 50.0 | 50.0 | 0.000 | 0.500 | - | - |" in gsm8k
    assert "| 0 | 4 | 75.0 | 100.0 | 25.0 | 75.0 | 50.0 | 25.0 | 0.500 | 1.000 | - | - |" in svamp


def test_matched_compute_table_by_hand(tmp_path):
    # seed 0: SA 4/4 -> more 4/4 -> RL 4/4; SWA 0/4 -> more 3/4 -> RL 3/4. Seed 2: SA more 4/4, SWA more 2/4, no RL
    # arms. Seed 1 has only the SWA extra SFT: no row.
    write_verdicts(tmp_path, {"sa-sft": [1, 1, 1, 1], "swa64-sft": [0, 0, 0, 0], "sa-sft-more": [1, 1, 1, 1],
                              "swa64-sft-more": [1, 1, 1, 0], "sa-rl": [1, 1, 1, 1], "swa64-rl": [0, 1, 1, 1],
                              "sa-sft-seed2": [1, 1, 1, 0], "swa64-sft-seed2": [0, 0, 0, 0],
                              "sa-sft-more-seed2": [1, 1, 1, 1], "swa64-sft-more-seed2": [1, 1, 0, 0],
                              "swa64-sft-more-seed1": [1, 1, 1, 1]})
    text = "\n".join(report.matched_compute_table(str(tmp_path), 64))
    # gaps d = SA - SWA per problem: SFT [1,1,1,1] -> 1 ± 0; more [0,0,0,1] -> 0.25 ± sqrt(1 - 1/4) / 4 = 0.2165
    # more SFT - RL per problem: [0,0,0,1] - [1,0,0,0] = [-1,0,0,1] -> 0 ± sqrt(2) / 4 = 0.3536
    assert "| 0 | +100.0 ± 0.0 | +25.0 ± 21.7 | +25.0 ± 21.7 | +0.0 ± 35.4 |" in text
    # seed 2: SFT [1,1,1,0] -> 0.75 ± 0.2165; more [0,0,1,1] -> 0.5 ± sqrt(2 - 1) / 4 = 0.25; no RL arms
    assert "| 2 | +75.0 ± 21.7 | +50.0 ± 25.0 | - | - |" in text
    assert "| 1 |" not in text
    # mean of 0.25 and 0.5 over two seeds: t(0.975, 1) = 12.706, sd 0.1768, half-width 12.706 * 0.1768 / sqrt(2)
    assert "Mean gap after the extra SFT: +37.5 points, 95% t-interval over 2 seeds [-121.3, +196.3]." in text
    assert "minus gap after RL (positive: RL leaves the smaller gap): +0.0 points (one seed)." in text
    assert report.matched_compute_table(str(tmp_path / "nothing"), 64) == []


def test_pass_at_k_table(tmp_path):
    run = tmp_path / "run"
    (run / "eval-passk").mkdir(parents=True)
    for label, window in (("sa-sft", None), ("swa64-rl", 64)):
        (run / label).mkdir()
        (run / label / "config.json").write_text(json.dumps({"window": window}))
    trace_metrics = {"sa-sft": {"pass@16": 0.9, "pass@1": 0.5, "pass@2": 0.75, "maj@16": 0.6},
                     "swa64-rl": {"pass@1": 0.25, "pass@2": 0.0, "pass@16": 1.0, "maj@16": 0.25}}
    (run / "eval-passk" / "summary.json").write_text(json.dumps(
        {label: entry({"trace": {**task(m["pass@1"], n=100), **m}}) for label, m in trace_metrics.items()}))
    assert report.pass_at_k_table(str(run)) == [
        "| checkpoint | window | problems | pass@1 | pass@2 | pass@16 | maj@16 |", "|---|---|---|---|---|---|---|",
        "| sa-sft | full | 100 | 50.0 | 75.0 | 90.0 | 60.0 |",
        "| swa64-rl | 64 | 100 | 25.0 | 0.0 | 100.0 | 25.0 |"]  # k sorted as numbers; 0 is a value, not "-"
    assert report.pass_at_k_table(str(tmp_path / "nothing")) == []


def test_wrong_answers_table(tmp_path):
    # the program of the prompt: A=3 B=5 C=1, 2 steps mod 10 -> A=8, B=6, C=1, answer 15
    question = ("Registers A, B, C hold digits. Each step updates the next register in turn (A, B, C, A, ...): it "
                "becomes itself plus the register after it (after C comes A), mod 10. Run 2 steps, then add up all "
                "registers.\nStart: A=3 B=5 C=1")
    right = "Step 1/2: A=A+B=3+5=8.\nStep 2/2: B=B+C=5+1=6.\nSum: A+B+C=8+6+1=15\n#### 15"
    completions = [right, right.replace("=15", "=16"), right.replace("5+1=6", "5+2=7").replace("8+6+1=15", "8+7+1=16"),
                   right.split("Sum")[0]]
    run = tmp_path / "run"
    (run / "eval" / "swa64-sft").mkdir(parents=True)
    (run / "swa64-sft").mkdir()
    (run / "swa64-sft" / "config.json").write_text(json.dumps({"window": 64}))
    (run / "eval" / "summary.json").write_text(json.dumps({"swa64-sft": entry({"trace": task(0.25)})}))
    (run / "eval" / "swa64-sft" / "trace.jsonl").write_text(json.dumps(
        {"id": "p", "prompt": f"<|im_start|>user\n{question}<|im_end|>\n", "completions": completions,
         "correct": [True, False, False, False]}) + "\n")
    assert report.wrong_answers_table(str(run)) == [
        "| checkpoint | window | completions | right (%) | wrong values summed (%) | right values, wrong addition (%) "
        "| no Sum line (%) |", "|---|---|---|---|---|---|---|", "| swa64-sft | 64 | 4 | 25.0 | 25.0 | 25.0 | 25.0 |"]
    # terse questions state no program: no table
    (run / "eval" / "swa64-sft" / "trace.jsonl").write_text(json.dumps(
        {"id": "p", "prompt": "Run 2 steps.\nStart: A=3 B=5 C=1", "completions": completions[1:2],
         "correct": [False]}) + "\n")
    assert report.wrong_answers_table(str(run)) == []
    assert report.wrong_answers_table(str(tmp_path / "nothing")) == []


def test_copy_fidelity_table(tmp_path, monkeypatch):
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    (run / "base").mkdir()
    toy_tokenizer().save(run / "base")
    (run / "eval" / "summary.json").write_text(json.dumps({"sa-sft": entry({"trace": task(1.0)}),
                                                           "swa64-sft": entry({"trace": task(0.5)})}))
    for label, window, completions in (("sa-sft", None, ["a"]), ("swa64-sft", 64, ["a", "b"])):
        (run / label).mkdir()
        (run / label / "config.json").write_text(json.dumps({"window": window}))
        (run / "eval" / label).mkdir()
        (run / "eval" / label / "trace.jsonl").write_text(json.dumps(
            {"id": "p", "prompt": "<|im_start|>user\nStart: A=1<|im_end|>\n", "completions": completions,
             "correct": [True] * len(completions)}) + "\n")
    # completion "a" copies a value 10 tokens back right and one 70 back wrong; "b" one 70 back right and one 200
    # back wrong
    copies = {"a": [(10, True), (70, False)], "b": [(70, True), (200, False)]}
    monkeypatch.setattr(report.trace, "trace_stats", lambda prompt, completion, tok: {"copies": [
        {"nearest": d, "faithful": ok} for d, ok in copies[tok.decode(completion)]]})
    assert report.copy_fidelity_table(str(run)) == [
        "| checkpoint | window | 0-31 | 64-95 | 128+ |", "|---|---|---|---|---|",
        "| sa-sft | full | 100.0 (1) | 0.0 (1) | - |",
        "| swa64-sft | 64 | 100.0 (1) | 50.0 (2) | 0.0 (1) |"]
    assert report.copy_fidelity_table(str(tmp_path / "nothing")) == []


def test_accuracy_against_window_keeps_the_arms_sinks(tmp_path, monkeypatch):
    # every trained arm has 4 sinks (as the trace preset's do): their points stay; the base model and the SA model
    # run without sinks are another model and leave the plot
    run = fabricate(tmp_path)
    for arm in ("sa-sft", "sa-rl", "swa64-sft", "swa64-rl", "swa128-sft", "swa128-rl", "swa64-rl-seed1"):
        config = json.loads((run / arm / "config.json").read_text())
        (run / arm / "config.json").write_text(json.dumps({**config, "sinks": 4}))
    drawn = {}
    monkeypatch.setattr(report, "line_plot", lambda path, title, series, *a, **k: drawn.update(
        {os.path.basename(path): {name: sorted(points) for name, points in series.items() if points}}))
    report.build_report(str(run))
    assert drawn["accuracy_vs_window.png"] == {"SA SFT": [(2, 0.8)], "SA SFT+RL": [(2, 0.9)],
                                               "SWA SFT": [(0, 0.3), (1, 0.8)], "SWA SFT+RL": [(0, 0.55), (1, 0.85)]}
