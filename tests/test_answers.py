"""
Table-driven tests for data/answers.py: extraction order, numeric and symbolic equality, adversarial input.

    python -m pytest -q tests/test_answers.py
"""
import time

import pytest

import data.answers as answers
from data.answers import MAGNITUDES, NOT_UNITS, POWERS, extract_answer, find_answer, is_correct, to_number

EXTRACT_CASES = [
    # (text, expected answer, expected method)
    ("She sells 9 eggs.\n#### 18", "18", "####"),
    ("#### 1,200 \nsome trailing chatter", "1,200", "####"),
    ("So $x = \\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}", "boxed"),
    ("first \\boxed{1} then \\boxed{2}", "2", "boxed"),
    ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)", "boxed"),
    ("good \\boxed{7} then broken \\boxed{8", "7", "boxed"),  # unbalanced last box is skipped
    ("\\fbox{42}", "42", "boxed"),
    ("our answer is $\\boxed 2$.", "2", "boxed"),
    ("Thus the answer is 3.5. Done.", "3.5", "answer is"),
    ("The Answer is: $12$", "12", "answer is"),
    ("I computed 3 then 4 and finally -17.5 apples", "-17.5", "last number"),
    ("so she needs 2 then 3 1/2 cups", "3 1/2", "last number"),
    ("no digits at all", None, None),
    ("", None, None),
    ("#### ", None, None),
]


@pytest.mark.parametrize("text,answer,method", EXTRACT_CASES)
def test_extract(text, answer, method):
    assert find_answer(text) == (answer, method)
    assert extract_answer(text) == answer


CORRECT_CASES = [
    # (completion, reference, expected)
    ("#### 72", "72", True),
    ("#### 73", "72", False),
    ("#### 1,200", "1200", True),
    ("#### 1200", "1,200", True),
    ("#### 18.00", "18", True),
    ("#### 18.5", "18", False),
    ("#### $18", "18", True),
    ("#### 18 dollars", "18", True),
    ("#### 18 dollars.", "18", True),
    ("#### 25%", "25", True),
    ("\\boxed{25\\%}", "25", True),
    ("#### -5", "-5", True),
    ("#### 5", "-5", False),
    ("#### \u22125", "-5", True),  # unicode minus
    ("#### 3/4", "0.75", True),
    ("#### 3/4", "\\frac{3}{4}", True),
    ("\\boxed{\\dfrac{3}{4}}", "0.75", True),
    ("\\boxed{\\frac{3}{4}}", "\\frac{4}{3}", False),
    ("\\boxed{x = 5}", "5", True),
    ("\\boxed{5\\text{ cm}}", "5", True),
    ("\\boxed{90^\\circ}", "90", True),
    ("the answer is 0.5.", "\\frac{1}{2}", True),
    ("\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt3}{2}", True),  # symbolic
    ("\\boxed{\\sqrt{2}/2}", "\\frac{\\sqrt{2}}{2}", True),
    ("\\boxed{2\\sqrt{2}}", "\\sqrt{8}", True),
    ("\\boxed{\\sqrt{3}}", "\\sqrt{2}", False),
    ("\\boxed{(3, \\frac{\\pi}{2})}", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
    ("\\boxed{(3, \\pi)}", "\\left( 3, \\frac{\\pi}{2} \\right)", False),
    ("\\boxed{2 x}", "2", False),
    ("#### Yes", "Yes", True),
    ("#### yes.", "Yes", True),
    ("#### No", "Yes", False),
    ("I think it is 7", "7", True),  # last-number fallback
    ("nothing here", "7", False),
    ("#### 7", "", False),  # empty reference never matches
    ("#### 7", 7, True),  # numeric reference is tolerated
    (None, "7", False),
    ("#### 5/0", "5", False),
    ("#### 3 1/2", "3.5", True),  # a mixed number
    ("#### 3 1/2", "15.5", False),
    ("#### 3 1/2", "7/2", True),
    ("#### -3 1/2", "-3.5", True),
    ("#### 3  1 / 2", "3.5", True),
    ("#### 3 1/2 cups", "3.5", True),
    ("it takes 3 1/2 cups", "3.5", True),
    ("\\boxed{3\\frac{1}{2}}", "3.5", True),
    ("\\boxed{3 \\frac{1}{2}}", "\\frac{7}{2}", True),
    ("#### 3 4/2", "5", False),  # not a proper fraction: no mixed number
    ("#### 3 4/2", "17", False),
    ("#### 3 1.5/2", "3.75", False),
    ("#### 1 200", "1200", True),  # a space between thousands
    ("#### - 5", "-5", True),
    ("#### 5 million", "5", False),
    ("#### 5 million dollars", "5000000", True),
    ("#### 1.5 million", "1,500,000", True),
    ("#### 4 dozen", "4", False),
    ("#### 2 dozen eggs", "24", True),
    ("#### 5 hundred thousand", "500000", True),
    ("#### 5 squared", "5", False),
    ("#### 5 squared", "25", True),
    ("#### 2 cubed", "8", True),
    ("#### 25 meters squared", "25", True),  # after a unit, a power word is part of the unit
    ("#### 25 square feet", "25", True),
    ("#### 7 apples", "7", True),
    ("#### 7 quarters", "7", True),
    ("#### 5 times", "5", True),
    ("#### 5 and a half", "5", False),
    ("#### 5 and a half", "5.5", False),
    ("#### 3 tenths", "3", False),
    ("#### 2 times pi", "2", False),
]


@pytest.mark.parametrize("completion,reference,expected", CORRECT_CASES)
def test_is_correct(completion, reference, expected):
    assert is_correct(completion, reference) is expected


ADVERSARIAL = [
    "#### " + "9" * 100_000,  # a number far past int()'s digit limit
    "\\boxed{" + "1" * 100_000 + "}",
    "\\boxed{1e100000}",
    "\\boxed{10^{10^{10^{10}}}}",
    "\\boxed{9**9**9**9}",
    "\\boxed{" * 50_000,  # unbalanced braces
    "}" * 50_000 + "{" * 50_000,
    "x" * 3_000_000 + " the answer is 4",  # megabytes of output
    "the answer is " + "(" * 5000,
    "\\boxed{\\frac{" * 2000 + "1" + "}" * 4000,
    "\x00\ud800 #### \x00",
    "#### 7\n" + "x" * 5_000_000,  # 5 MB after the marker
    "####" * 1_250_000,
    "#### " + "\\boxed{" * 700_000,
    "\\boxed{" * 700_000 + "#### 4",
    "#### " + "1 " * 2_500_000 + "1/2",
    "#### 5" + " apples" * 700_000,
    "#### 5 million" * 350_000,
]


@pytest.mark.parametrize("text", ADVERSARIAL, ids=range(len(ADVERSARIAL)))
def test_adversarial_is_fast_and_safe(text):
    start = time.time()
    for reference in ("4", "\\frac{1}{2}", "Yes"):
        extract_answer(text)
        assert is_correct(text, reference) in (True, False)
    assert time.time() - start < 3.0


WORD_CASES = ([(f"5 {word}", 5 * scale) for word, scale in MAGNITUDES.items()]
              + [(f"5 {word}", 5 ** power) for word, power in POWERS.items()]
              + [(f"5 {word}", None) for word in sorted(NOT_UNITS)]
              + [(f"5 {word} apples", None) for word in sorted(NOT_UNITS)]
              + [(f"5 apples {word}", None) for word in MAGNITUDES]
              + [(f"5 {word} {word}", None) for word in POWERS]
              + [(f"5 cm {word}", 5) for word in POWERS]
              + [(f"5 {word}", 5) for word in ("dollars", "cm", "apples", "percent", "times", "quarters", "square feet")])


@pytest.mark.parametrize("answer,value", WORD_CASES, ids=[a for a, _ in WORD_CASES])
def test_words_after_a_number_scale_it_fail_it_or_are_units(answer, value):
    assert to_number(answer) == value
    assert to_number("-" + answer) == (None if value is None else -value)
    assert is_correct(f"#### {answer}", "5") is (value == 5)
    if value is not None:
        assert is_correct(f"#### {answer}", str(value))


def test_marker_found_however_much_text_follows():
    assert find_answer("#### 42\n" + "x" * 20_000) == ("42", "####")
    assert find_answer("#### 41\n" + "y " * 10_000 + "#### 42\n" + "z" * 20_000 + "\\boxed{7}") == ("42", "####")
    assert is_correct("#### 42\n" + "x" * 5_000_000, "42")
    assert not is_correct("#### 42\n" + "x" * 5_000_000, "43")
    # megabytes on the marker's line are no answer: the other methods search the tail
    assert find_answer("#### " + "1" * 20_000 + "\nso the answer is 4.") == ("4", "answer is")


def test_megabytes_found_at_end():
    assert is_correct("x" * 3_000_000 + " the answer is 4", "4")


def test_off_main_thread_numeric_still_works():
    import threading
    results = []
    worker = threading.Thread(target=lambda: results.append(
        (is_correct("#### 1,200", "1200"), is_correct("\\boxed{2\\sqrt{2}}", "\\sqrt{8}"))))
    worker.start()
    worker.join()
    assert results == [(True, False)]  # symbolic needs the main thread's SIGALRM time limit, so it is skipped


def test_is_correct_many_gives_is_correct_in_this_process_and_in_workers():
    # CORRECT_CASES has symbolic comparisons (\sqrt{8} against 2\sqrt{2}, fractions, ...) as well as quick ones;
    # twice over, so that more comparisons wait than there are workers
    completions, references, expected = zip(*(CORRECT_CASES * 2), ("#### x+1", None, False))
    assert answers.is_correct_many(completions, references) == list(expected)
    assert answers.is_correct_many(completions, references, workers=2) == list(expected)  # spawned processes
    assert answers._pool, "the worker processes failed: the comparisons ran here"
