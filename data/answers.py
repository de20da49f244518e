"""
Answer extraction and checking: the single definition of "correct" used as RL reward and eval metric.

    from data.answers import extract_answer, is_correct
    extract_answer("... so she has 18 dollars.\\n#### 18")   # -> "18"
    is_correct("The answer is $\\frac{1}{2}$.", "0.5")       # -> True

extract_answer tries, in order: GSM8K style "#### N", the last brace-matched \\boxed{...} (or \\fbox{...}),
"the answer is ...", and as a declared fallback the last number in the text. find_answer also returns
which of these matched. is_correct compares numerically first and falls back to symbolic equality with
math_verify under a time limit (on the main thread only: the limit is a SIGALRM; other threads get the
numeric and plain-text comparisons). is_correct_many checks a batch the same way, with the symbolic
comparisons, which take tens of milliseconds where the rest take microseconds, spread over worker processes.

Numbers: commas, trailing zeros, fractions, a mixed number ("3 1/2" and "3\\frac{1}{2}" are 3.5; "3 4/2" is
not a number), percents and $ are forgiven. Words after a number are read as follows:
    magnitudes scale it exactly: hundred, thousand, million, billion, trillion, dozen, and their plurals
        ("5 million" is 5000000, "2 dozen eggs" is 24, "5 hundred thousand" is 500000);
    a power word right after the number (or its magnitude) raises it: squared, cubed ("5 squared" is 25);
        after a unit it is part of the unit ("5 meters squared" is 5);
    words that would change the value some other way make it not a number: number words (one ... ninety),
        fraction words (half, halves, third ... billionth, and plurals), and, point, plus, minus, over,
        divided, power, root, pi, sqrt; so do a magnitude after a unit or a second power word;
    any other words are units and forgiven ("18 dollars", "5 cm", "7 apples", "25 square feet", "7 quarters",
        "5 times").

Neither function ever raises: model output is adversarial input (huge numbers, unbalanced braces, megabytes
of text), and any failure is "wrong". Time stays linear in the text: the "####" marker is found anywhere
with str.rfind (its line is the answer if no longer than MAX_SCAN_CHARS); the other methods search only the
last MAX_SCAN_CHARS characters, where answers come.

Test: python -m pytest -q tests/test_answers.py
"""

import os
import re
import threading
from fractions import Fraction

MAX_SCAN_CHARS = 10_000  # the tail of a completion that all methods but "####" search, and the longest answer
MAX_ANSWER_CHARS = 300  # longer "answers" are not worth a symbolic comparison
SYMBOLIC_TIMEOUT_S = 2  # per math_verify parse/verify call (signal based: only enforced on the main thread)

BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
BARE_BOX_RE = re.compile(r"\\boxed\s+([^\s${}]+)")  # "\boxed 2", seen in a few MATH solutions
ANSWER_IS_RE = re.compile(r"answer is\s*:?\s*(.+)", re.IGNORECASE)
NUMBER_RE = re.compile(r"-?(?:\d+ +(?=\d+/\d))?\d+(?:,\d{3})*(?:\.\d+)?(?:/\d+)?")  # a mixed number is one


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
    marker = text.rfind("####")
    if marker >= 0:
        answer = text[marker + 4:].lstrip().partition("\n")[0].strip()
        if answer and len(answer) <= MAX_SCAN_CHARS:  # megabytes on one line are no answer
            return answer, "####"
    text = text[-MAX_SCAN_CHARS:]
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


# a number: optionally a whole number before a fraction (a mixed number), optionally a fraction, optionally
# followed by a percent sign or words ("18 dollars", "5 cm", "5 million")
_NUMERIC_RE = re.compile(r"(-?)(?:(\d+) +(?=\d+/\d))?(\d+(?:\.\d*)?|\.\d+)(?:/(\d+(?:\.\d*)?))?\s*"
                         r"(%|[A-Za-z]{2,}(?:[ .]+[A-Za-z]+)*)?")
MAGNITUDES = {"hundred": 100, "thousand": 10**3, "million": 10**6, "billion": 10**9, "trillion": 10**12, "dozen": 12}
MAGNITUDES |= {word + "s": scale for word, scale in MAGNITUDES.items()}
POWERS = {"squared": 2, "cubed": 3}
NUMBER_WORDS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
                "sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety").split()
FRACTION_WORDS = ("half halves third fourth fifth sixth seventh eighth ninth tenth hundredth thousandth millionth "
                  "billionth").split()
NOT_UNITS = ({"and", "point", "plus", "minus", "over", "divided", "power", "root", "pi", "sqrt"}
             | set(NUMBER_WORDS) | set(FRACTION_WORDS) | {word + "s" for word in FRACTION_WORDS})


def _apply_words(value, words):
    """value followed by words: scaled by magnitudes, raised by a power word, or None if a word changes it
    some other way. The remaining words are units."""
    words = [w.lower() for w in re.split(r"[ .]+", words) if w]
    while words and words[0] in MAGNITUDES:
        value *= MAGNITUDES[words.pop(0)]
    if words and words[0] in POWERS:
        value **= POWERS[words.pop(0)]
    if words and words[0] in POWERS:  # "5 squared squared": a unit must come before a power word that is part of it
        return None
    if any(w in MAGNITUDES or w in NOT_UNITS for w in words):
        return None
    return value


def to_number(s):
    """Parse an answer string as an exact Fraction, or None if it is not a plain number."""
    s = _strip_latex(s)
    s = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", s)  # thousands separators
    s = re.sub(r"^(-?)\\frac\{(\d+)\}\{(\d+)\}", r"\1\2/\3", s)  # \frac{1}{2} -> 1/2
    s = re.sub(r"^(-?\d+) *\\frac\{(\d+)\}\{(\d+)\}", r"\1 \2/\3", s)  # 3\frac{1}{2} -> 3 1/2
    if re.fullmatch(r"[-\d./ ]+", s):
        s = re.sub(r" */ *", "/", s.strip())
        if not re.fullmatch(r"-?\d+ +\d+/\d+", s):  # spaces elsewhere separate thousands ("1 200") or a sign
            s = s.replace(" ", "")
    if len(s) > 100:  # refuse absurdly long numbers (int() of huge digit strings is slow or refused)
        return None
    m = _NUMERIC_RE.fullmatch(s)
    if m is None:
        return None
    sign, whole, numerator, denominator, words = m.groups()
    value = Fraction(numerator)
    if denominator is not None:
        if Fraction(denominator) == 0:
            return None
        value /= Fraction(denominator)
    if whole is not None:
        if denominator is None or "." in numerator + denominator or value >= 1:  # "3 4/2", "3 1.5/2": not mixed
            return None
        value += int(whole)
    if words not in (None, "%"):
        value = _apply_words(value, words)
        if value is None:
            return None
    return -value if sign else value


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


def _quick_verdict(completion, reference_answer):
    """is_correct's verdict where it needs no symbolic comparison, else the pair (prediction, reference) to compare
    symbolically."""
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
    return pred, reference_answer


def is_correct(completion, reference_answer):
    """True iff the completion's final answer equals the reference answer. Never raises."""
    return is_correct_many([completion], [reference_answer])[0]


def _symbolic_or_false(pair):
    try:
        return _symbolic_equal(*pair)
    except Exception:  # noqa: BLE001 -- a reward function must never crash a training run
        return False


_pool = None
SCORE_WORKERS = min(8, (os.cpu_count() or 1) - 1)  # is_correct_many's worker processes in evaluations and RL


def is_correct_many(completions, reference_answers, workers=0):
    """[is_correct(c, r) for c, r in zip(completions, reference_answers)], with the symbolic comparisons (tens of
    milliseconds each, where the rest takes microseconds) spread over `workers` processes when there are more of
    them than workers. The processes are spawned once and kept: each has its own main thread, which math_verify's
    time limit needs."""
    global _pool
    verdicts = []
    for completion, reference in zip(completions, reference_answers):
        try:
            verdicts.append(_quick_verdict(completion, reference))
        except Exception:  # noqa: BLE001
            verdicts.append(False)
    pending = [i for i, v in enumerate(verdicts) if not isinstance(v, bool)]
    results = None
    if workers > 1 and len(pending) > workers and _pool is not False:
        import concurrent.futures
        import multiprocessing
        try:
            if _pool is None:
                # spawned, not forked: the caller may hold a CUDA context, which a forked child cannot use or copy
                _pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
            results = list(_pool.map(_symbolic_or_false, [verdicts[i] for i in pending], chunksize=4))
        except (OSError, concurrent.futures.process.BrokenProcessPool) as e:
            # e.g. a main module that a spawned process cannot import again (python - < script): compare here
            print(f"answer checking goes on in one process: its worker processes failed ({type(e).__name__})")
            _pool = False
    if results is None:
        results = [_symbolic_or_false(verdicts[i]) for i in pending]
    for i, ok in zip(pending, results):
        verdicts[i] = ok
    return verdicts
