"""
Table-driven tests for data/answers.py: extraction order, numeric and symbolic equality, adversarial input.

    python -m pytest -q tests/test_answers.py
"""
import time

import pytest

from data.answers import extract_answer, find_answer, is_correct

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
]


@pytest.mark.parametrize("text", ADVERSARIAL, ids=range(len(ADVERSARIAL)))
def test_adversarial_is_fast_and_safe(text):
    start = time.time()
    for reference in ("4", "\\frac{1}{2}", "Yes"):
        extract_answer(text)
        assert is_correct(text, reference) in (True, False)
    assert time.time() - start < 3.0


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
