"""
Answer extraction and checking: the single definition of "correct" used as RL reward and eval metric.

    from data.answers import extract_answer, is_correct
    extract_answer("... so she has 18 dollars.\\n#### 18")   # -> "18"
    is_correct("The answer is $\\frac{1}{2}$.", "0.5")       # -> True

extract_answer tries, in order: GSM8K style "#### N", the last brace-matched \\boxed{...} (or \\fbox{...}),
"the answer is ...", and as a declared fallback the last number in the text. find_answer also returns
which of these matched. is_correct compares numerically first (commas, trailing zeros, fractions,
percents, $ and trailing unit words are forgiven) and falls back to symbolic equality with math_verify
under a time limit (on the main thread only: the limit is a SIGALRM; other threads get the numeric and
plain-text comparisons). Neither function ever raises: model output is adversarial input (huge numbers,
unbalanced braces, megabytes of text), so only the tail of the text is scanned and any failure is "wrong".

Test: python -m pytest -q tests/test_answers.py
"""

import re
import threading
from fractions import Fraction

MAX_SCAN_CHARS = 10_000  # only the tail of a completion is searched; answers come at the end
MAX_ANSWER_CHARS = 300  # longer "answers" are not worth a symbolic comparison
SYMBOLIC_TIMEOUT_S = 2  # per math_verify parse/verify call (signal based: only enforced on the main thread)

BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
BARE_BOX_RE = re.compile(r"\\boxed\s+([^\s${}]+)")  # "\boxed 2", seen in a few MATH solutions
ANSWER_IS_RE = re.compile(r"answer is\s*:?\s*(.+)", re.IGNORECASE)
NUMBER_RE = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?(?:/\d+)?")


def last_boxed(text):
    """Contents of the last \\boxed{...} / \\fbox{...} whose braces balance, else a bare "\\boxed 2", else None."""
    # match every brace in one linear pass, so many unclosed \boxed{ cannot make this quadratic
    close_of, stack = {}, []
    for i, ch in enumerate(text):
        if ch == "{":
            stack.append(i)
        elif ch == "}" and stack:
            close_of[stack.pop()] = i
    for m in reversed(list(BOX_RE.finditer(text))):
        open_pos = m.end() - 1
        if open_pos in close_of:
            return text[open_pos + 1:close_of[open_pos]]
    bare = BARE_BOX_RE.findall(text)
    return bare[-1] if bare else None


def find_answer(text):
    """Return (answer, method) with method in {"####", "boxed", "answer is", "last number"}, or (None, None)."""
    if not isinstance(text, str):
        return None, None
    text = text[-MAX_SCAN_CHARS:]
    if "####" in text:
        answer = text.rsplit("####", 1)[1].strip().split("\n")[0].strip()
        if answer:
            return answer, "####"
    answer = last_boxed(text)
    if answer is not None and answer.strip():
        return answer.strip(), "boxed"
    matches = ANSWER_IS_RE.findall(text)
    if matches:
        # the answer runs to the end of its sentence; a "." inside a number like 3.5 does not end it
        answer = re.split(r"\.(?:\s|$)", matches[-1])[0].strip().strip("$").strip()
        if answer:
            return answer, "answer is"
    numbers = NUMBER_RE.findall(text)
    if numbers:
        return numbers[-1], "last number"
    return None, None


def extract_answer(text):
    """The final answer in a completion as a string, or None."""
    return find_answer(text)[0]


def _strip_latex(s):
    s = s.strip().replace("\u2212", "-")  # unicode minus
    s = re.sub(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}", r"\1", s)
    s = re.sub(r"\^\s*\{?\\circ\}?", "", s)  # degrees
    for junk in ("\\$", "$", "\\!", "\\,", "\\;", "\\ ", "\\left", "\\right"):
        s = s.replace(junk, "")
    s = s.replace("\\%", "%").replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = re.sub(r"^[A-Za-z]\s*=\s*", "", s.strip())  # "x = 5" -> "5"
    return s.strip().rstrip(".").strip()


# a number, optionally a fraction, optionally followed by a percent sign or unit words ("18 dollars", "5 cm")
_NUMERIC_RE = re.compile(r"(-?)(\d+(?:\.\d*)?|\.\d+)(?:/(\d+(?:\.\d*)?))?\s*(%|[A-Za-z]{2,}(?:[ .]+[A-Za-z]+)*)?")
_NOT_UNITS = {"pi", "sqrt", "i", "e"}


def to_number(s):
    """Parse an answer string as an exact Fraction, or None if it is not a plain number."""
    s = _strip_latex(s)
    s = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", s)  # thousands separators
    s = re.sub(r"^(-?)\\frac\{(\d+)\}\{(\d+)\}", r"\1\2/\3", s)  # \frac{1}{2} -> 1/2
    s = s.replace(" ", "") if re.fullmatch(r"[-\d./ ]+", s) else s
    if len(s) > 100:  # refuse absurdly long numbers (int() of huge digit strings is slow or refused)
        return None
    m = _NUMERIC_RE.fullmatch(s)
    if m is None or (m.group(4) and m.group(4).split()[0].lower() in _NOT_UNITS):
        return None
    value = Fraction(m.group(2))
    if m.group(3) is not None:
        if Fraction(m.group(3)) == 0:
            return None
        value /= Fraction(m.group(3))
    return -value if m.group(1) else value


def _normalize_text(s):
    return re.sub(r"\s+", "", _strip_latex(s)).lower()


def _symbolic_equal(pred, ref):
    from math_verify import parse, verify  # imported lazily: sympy is slow to import and rarely needed

    if len(pred) > MAX_ANSWER_CHARS or len(ref) > MAX_ANSWER_CHARS:
        return False
    if threading.current_thread() is not threading.main_thread():
        return False  # math_verify's time limit is SIGALRM, which only works on the main thread; never risk a hang
    # towers of exponents, huge powers or factorials make sympy compute astronomically large integers in C,
    # where the signal-based timeout cannot interrupt it
    if re.search(r"\^\s*\{?[^}]*\^|\*\*.*\*\*|\d{50}|\^\s*\{?\s*\d{5}|\d{4}\s*!", pred):
        return False
    gold = parse("\\boxed{" + ref + "}", parsing_timeout=SYMBOLIC_TIMEOUT_S)
    answer = parse("\\boxed{" + pred + "}", parsing_timeout=SYMBOLIC_TIMEOUT_S)
    return bool(gold and answer and verify(gold, answer, timeout_seconds=SYMBOLIC_TIMEOUT_S))


def is_correct(completion, reference_answer):
    """True iff the completion's final answer equals the reference answer. Never raises."""
    try:
        pred = extract_answer(completion)
        if isinstance(reference_answer, (int, float)):
            reference_answer = str(reference_answer)
        if pred is None or not isinstance(reference_answer, str) or not reference_answer.strip():
            return False
        a, b = to_number(pred), to_number(reference_answer)
        if a is not None and b is not None:
            return a == b
        if _normalize_text(pred) == _normalize_text(reference_answer):
            return True
        return _symbolic_equal(pred, reference_answer)
    except Exception:  # noqa: BLE001 -- a reward function must never crash a training run
        return False
