"""
Tests for data/synthetic.py: determinism, disjoint splits, checkable answers, gaps honoured.

    python -m pytest -q tests/test_synthetic.py
"""
import json
import re
import subprocess
import sys

import pytest

from data.answers import is_correct
from common import read_jsonl as load_jsonl
from data.synthetic import make_split
from tokenizer import toy_tokenizer

GAPS = (0, 16, 64, 300)


def test_deterministic():
    assert make_split("train", 20, seed=3, gaps=GAPS) == make_split("train", 20, seed=3, gaps=GAPS)
    assert make_split("train", 20, seed=3, gaps=GAPS) != make_split("train", 20, seed=4, gaps=GAPS)


def test_splits_disjoint():
    test = make_split("test", 200, gaps=(0,))  # gap 0 has the fewest distinct questions: worst case
    train = make_split("train", 2000, gaps=(0,), exclude={r["question"] for r in test})
    questions = [r["question"] for r in train]
    assert len(set(questions)) == len(questions)
    assert not set(questions) & {r["question"] for r in test}
    assert not {r["id"] for r in train} & {r["id"] for r in test}


def test_solutions_are_correct_and_wrong_answers_are_not():
    for r in make_split("train", 40, gaps=GAPS):
        assert set(r) >= {"id", "question", "solution", "answer"}
        assert is_correct(r["solution"], r["answer"])
        assert not is_correct(f"#### {int(r['answer']) + 1}", r["answer"])


def _tokens_after_first_value(question, encode):
    head = re.match(r"Let \w = \d+", question).group(0)
    return len(encode(question)) - len(encode(head))


def test_gap_honoured_in_characters_and_toy_tokens():
    tok = toy_tokenizer()
    for r in make_split("test", 40, gaps=GAPS, tokenizer=tok):
        gap = GAPS[int(r["id"].rsplit("-", 1)[1]) % len(GAPS)]
        assert r["gap"] == _tokens_after_first_value(r["question"], tok.encode) >= gap
        assert r["gap"] < gap + 80  # never much longer than asked for
    for r in make_split("test", 8, gaps=(500,)):
        assert 500 <= len(r["question"]) - len(re.match(r"Let \w = \d+", r["question"]).group(0)) < 580


class WordTokenizer:
    """A tokenizer where a token is a whitespace-separated word: gaps must be counted in its tokens."""

    def encode(self, text):
        return text.split()


def test_gap_measured_with_given_tokenizer():
    tok = WordTokenizer()
    for r in make_split("test", 10, gaps=(100,), tokenizer=tok):
        assert 100 <= _tokens_after_first_value(r["question"], tok.encode) < 120
        assert len(r["question"]) > 300  # far more characters than word tokens


def test_cli_writes_both_splits(tmp_path):
    cmd = [sys.executable, "-m", "data.synthetic", "--n-train", "30", "--n-test", "10", "--gaps", "0,40",
           "--out-dir", str(tmp_path)]
    subprocess.run(cmd, check=True, capture_output=True)
    train, test = load_jsonl(tmp_path / "train.jsonl"), load_jsonl(tmp_path / "test.jsonl")
    assert (len(train), len(test)) == (30, 10)
    bad = subprocess.run(cmd[:3] + ["--gaps", "a,b"], capture_output=True, text=True)
    assert bad.returncode != 0 and bad.stderr.strip().startswith("error:")
    assert json.loads((tmp_path / "test.jsonl").read_text().splitlines()[0])["id"] == test[0]["id"]


def test_max_value_bounds_every_number():
    rows = make_split("train", 60, gaps=(0, 64), max_value=9)
    values = [int(v) for r in rows for v in re.findall(r"= (\d+)", r["question"])]
    assert values and max(values) <= 9 and len(set(values)) > 5
    assert all(abs(int(r["answer"])) <= 18 and is_correct(r["solution"], r["answer"]) for r in rows)
    assert max(int(v) for r in make_split("train", 60, gaps=(0,)) for v in re.findall(r"= (\d+)", r["question"])) > 9


def test_too_few_distinct_questions_is_an_error_not_a_hang():
    # max value 0 and gap 0 leave 1,012 distinct questions: 23 * 22 name pairs times two operators
    assert len(make_split("test", 1000, gaps=(0,), max_value=0)) == 1000
    with pytest.raises(ValueError, match=r"test split: found only 1,012 distinct questions of the 1,013 .*--max-value"):
        make_split("test", 1013, gaps=(0,), max_value=0)
    test = {r["question"] for r in make_split("test", 1000, gaps=(0,), max_value=0)}
    with pytest.raises(ValueError, match=r"found only 12 distinct questions of the 20 asked for \(1,000 of other"):
        make_split("train", 20, gaps=(0,), max_value=0, exclude=test)


def test_a_gap_with_few_questions_does_not_stop_the_others():
    rows = make_split("train", 6000, gaps=(0, 64), max_value=0)  # gap 0 runs out of its 1,012 questions
    assert len({r["question"] for r in rows}) == 6000
    assert 1000 < sum(r["gap"] < 64 for r in rows) <= 1012


def test_cli_reports_too_few_questions_in_one_line(tmp_path, monkeypatch):
    from common import run_main
    from data.synthetic import main
    monkeypatch.setattr(sys, "argv", ["synthetic.py", "--n-test", "5000", "--max-value", "1", "--gaps", "0",
                                      "--out-dir", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_:
        run_main(main)
    message = str(exit_.value.code)
    assert message.startswith("error: test split: found only ") and "\n" not in message
    assert "raise --max-value" in message
    assert list(tmp_path.iterdir()) == []
