"""
What the stages share: one way to report bad input, print, start and stop several processes, read the window
flags, read and write JSONL, log metrics, save a training run, name evaluation runs, and the accuracy check
that sft.py, rl.py and evaluate.py all run (evaluate_task).

The stages (convert.py, sft.py, rl.py, evaluate.py) import this module, model.py, tokenizer.py and data/,
never each other.
"""
import collections
import contextlib
import errno
import hashlib
import json
import math
import os
import re
import sys
import time

import torch
import torch.distributed as dist
from tqdm import tqdm

from data.answers import SCORE_WORKERS, find_answer, is_correct_many, to_number
from model import checkpoint_files, generate, save_checkpoint

STATE_FILE = "trainer_state.pt"  # optimizer, step, RNG: what --resume needs
METRICS_FILE = "metrics.jsonl"  # one JSON line per step of a training run


# ----------------------------------------------------------------------------------------------------------
# Errors: bad input ends a script with one line, never a traceback.

class UserError(ValueError):
    """Something the user can fix: a wrong path, a bad flag, a malformed file. Reported as one line. A ValueError,
    as bad values are."""


def fail(message):
    raise UserError(message)


def run_main(main):
    """Run a script's main(). A UserError, or a file the system refuses (OSError with a file name), ends the
    script with one line "error: ..." on stderr and exit status 1. Anything else is a bug and keeps its traceback."""
    try:
        main()
    except UserError as e:
        sys.exit(f"error: {e}")
    except OSError as e:
        if e.filename is None:
            raise
        sys.exit(f"error: {e.filename}: {e.strerror or e}")


@contextlib.contextmanager
def writing(path):
    """Name `path` in an OSError raised inside: a full disk fails a write() or close() with no file name, and
    run_main can only report errors that name their file."""
    try:
        yield
    except OSError as e:
        if e.filename is None:
            e.filename = path
        raise


def read_json(path):
    """A JSON file that must hold an object; text that is not UTF-8 JSON is a UserError naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except UnicodeDecodeError:
        fail(f"{path}: not UTF-8 text")
    except json.JSONDecodeError as e:
        fail(f"{path}:{e.lineno}: malformed JSON ({e.msg})")
    if not isinstance(value, dict):
        fail(f"{path}: expected a JSON object, not {type(value).__name__}")
    return value


# ----------------------------------------------------------------------------------------------------------
# Processes: one, or several under torchrun (which sets RANK, WORLD_SIZE and LOCAL_RANK).

def print0(*args, **kwargs):
    """print on the first process only."""
    if int(os.environ.get("RANK", 0)) == 0:
        print(*args, **kwargs)


def init_distributed(device=None):
    """Returns (rank, world, device). Under torchrun each process takes GPU LOCAL_RANK and joins the process group
    (NCCL on GPUs, gloo on the CPU); alone, it is rank 0 of 1."""
    ddp = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    rank, world = (int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])) if ddp else (0, 1)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) if ddp else (device.index or 0))
        torch.cuda.set_device(device)
    if ddp:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def close_distributed():
    """Wait for every rank, then destroy the process group (the last reference to it must be the one dropped here).

    The barrier's work object stays referenced here until the group is gone. Otherwise a gloo worker thread can
    still be freeing it when the group's destructor, run with the GIL held, joins that thread; freeing the work's
    tensor needs the GIL, and the process hangs at exit (torch 2.13 on CPU, a few runs in a hundred).
    """
    if not dist.is_initialized():
        return
    done = dist.barrier(async_op=True)
    done.wait()
    dist.destroy_process_group()


# ----------------------------------------------------------------------------------------------------------
# The window flags: --window N | none, --sinks S, overriding what a checkpoint was saved with.

def parse_window(text):
    """A --window value: a positive integer, or "none" for full attention (None)."""
    if text.lower() == "none":
        return None
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        fail(f"--window must be a positive integer or none, got {text!r}")
    return int(text)


def add_window_args(parser, default="the checkpoint's"):
    """--window and --sinks; check_window_args refuses bad values with one line (argparse would add its usage)."""
    parser.add_argument("--window", default=None,
                        help=f"keys each query attends, itself included: an integer, or none for full attention "
                             f"(default: {default})")
    parser.add_argument("--sinks", default=None,
                        help=f"first tokens of a sequence that every query keeps attending (default: {default})")


def check_window_args(args):
    if args.window is not None:
        parse_window(args.window)
    if args.sinks is not None:
        text = str(args.sinks)
        if not (text.isascii() and text.isdigit()):
            fail(f"--sinks must be an integer >= 0, got {text!r}")
        args.sinks = int(text)


def apply_window(model, args):
    """Put the model under --window / --sinks where given; the weights do not change."""
    check_window_args(args)
    if args.window is not None or args.sinks is not None:
        window = model.config.window if args.window is None else parse_window(args.window)
        model.set_window(window, args.sinks)


# ----------------------------------------------------------------------------------------------------------
# JSONL files

def read_jsonl(path, fields=None, optional=None, check=None):
    """Rows of a JSONL file as dicts. fields {name: type or tuple of types}: each row must have them, of those
    types; optional {name: types}: a row may lack them, and holds them of those types. check(row), when given,
    raises UserError for a row that is wrong in another way. Every problem is reported as one UserError naming
    the file and line."""
    if not os.path.isfile(path):
        fail(f"{path} not found")
    rows = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                fail(f"{path}:{lineno}: not UTF-8 text")
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                fail(f"{path}:{lineno}: malformed JSON ({e.msg})")
            if not isinstance(row, dict):
                fail(f"{path}:{lineno}: expected a JSON object")
            for name, types in (fields or {}).items():
                if name not in row:
                    fail(f"{path}:{lineno}: missing field {name!r}")
                _check_type(path, lineno, row, name, types)
            for name, types in (optional or {}).items():
                if name in row:
                    _check_type(path, lineno, row, name, types)
            if check is not None:
                try:
                    check(row)
                except UserError as e:
                    fail(f"{path}:{lineno}: {e}")
            rows.append(row)
    return rows


def _check_type(path, lineno, row, name, types):
    value = row[name]
    if not isinstance(value, types) or isinstance(value, bool) and bool not in _tuple(types):
        fail(f"{path}:{lineno}: field {name!r} must be {_type_names(types)}, not {type(value).__name__}")


def _tuple(types):
    return types if isinstance(types, tuple) else (types,)


def _type_names(types):
    names = {str: "a string", int: "an integer", float: "a number", list: "a list", dict: "an object",
             bool: "true or false", type(None): "null"}
    return " or ".join(names.get(t, t.__name__) for t in _tuple(types))


def write_jsonl(path, rows):
    """Write atomically: a crash mid-write never leaves a truncated file behind."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with writing(path), open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    os.replace(tmp, path)


def write_text(path, text):
    """Write atomically (temporary file, then rename)."""
    tmp = path + ".tmp"
    with writing(path), open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


class MetricsLog:
    """A training run's metrics.jsonl: one JSON line per row. At start it is rewritten with the rows of the
    checkpoint being resumed (rows logged after that checkpoint, before a crash, are dropped rather than
    repeated). Only the first process writes."""

    def __init__(self, path, history=(), write=True):
        self.path, self.history, self.write = path, list(history), write
        if write:
            write_jsonl(path, self.history)

    def log(self, row):
        self.history.append(row)
        if self.write:
            with writing(self.path), open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")


def save_run(out, model, tokenizer, meta, state, history):
    """Checkpoint, trainer state and metrics in one atomic directory, so a crash never leaves weights without
    the optimizer state (or metrics) that match them."""
    with writing(out):
        save_checkpoint(out, model, tokenizer, meta,
                        extra_files={STATE_FILE: lambda path: save_state(state, path),
                                     METRICS_FILE: lambda path: write_jsonl(path, history)})


def save_state(state, path):
    try:
        torch.save(state, path)
    except RuntimeError as e:  # how torch reports a write that failed (a full disk): name the file, as OSError does
        raise OSError(errno.EIO, f"cannot write ({str(e).strip()[:200]})", path) from e


def load_state(path):
    """A trainer_state.pt, read as data only (weights_only: a crafted file cannot run code); a file that is not
    one is a UserError naming it."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 -- unpickling, truncation and format errors all mean "not a trainer state"
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        fail(f"{path} is not a readable trainer state ({reason[:200]})")


# ----------------------------------------------------------------------------------------------------------
# Names of runs. run.sh names a training arm after its attention (sa, swa<W>) and stage (sft, rl); evaluate.py
# labels a checkpoint with its directory name, plus -window<W>-sinks<S> when it ran under another window.

# <attention>-<stage>[-<variant>][-seed<N>]: sa-sft, swa64-rl, swa64-sft-oracle, swa64-rl-random-seed1
ARM_RE = re.compile(r"^(sa|swa(\d+))-(sft|rl)(?:-(?!seed\d+$)([a-z][a-z0-9]*))?(?:-seed(\d+))?$")
LABEL_RE = re.compile(r"^(.+?)(?:-window(None|\d+)-sinks(\d+))?$")


def arm_name(window):
    return "sa" if window is None else f"swa{window}"


def eval_label(ckpt, config=None):
    """evaluate.py's label: the checkpoint directory's name, plus the window it ran under when overridden
    (config: the model's config after the override)."""
    label = os.path.basename(os.path.normpath(ckpt))
    return label if config is None else f"{label}-window{config.window}-sinks{config.sinks}"


HEADER_BYTES = 65536  # hashed whole at the start of each weights file: the safetensors header lies there
SAMPLE_BYTES = 4096  # one sampled chunk of a weights file
SAMPLES_PER_FILE = 64


def weights_id(ckpt):
    """A short hash that tells one checkpoint's model from another's, cheaply: config.json, meta.json and the
    tokenizer files whole; of each weights file its name, its size, its start (the safetensors header: every
    tensor's name, dtype and shape) and chunks at evenly spaced offsets through the rest.

    Why samples rather than the whole file: hashing hundreds of MB on every evaluation call would cost more than
    evaluating a small task. Training changes every weight, so any chunk of a retrained checkpoint differs (and
    its meta.json records a new step, metrics and timings); equal bytes give an equal id whatever the files'
    dates or paths, so a copied checkpoint keeps its id where a hash of modification times would not."""
    h = hashlib.sha256()
    for name in ("config.json", "meta.json", "tokenizer_config.json", "tokenizer.tiktoken"):
        with open(os.path.join(ckpt, name), "rb") as f:
            h.update(name.encode() + b"\0" + f.read() + b"\0")
    for path in checkpoint_files(ckpt):
        size = os.path.getsize(path)
        h.update(f"{os.path.basename(path)}\0{size}\0".encode())
        with open(path, "rb") as f:
            h.update(f.read(HEADER_BYTES))
            for i in range(SAMPLES_PER_FILE):
                f.seek(size * i // SAMPLES_PER_FILE)
                h.update(f.read(SAMPLE_BYTES))
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------------
# Tasks: where a task's problems live and how a problem becomes a chat prompt, so that training asks exactly
# what evaluation asks. A problem is a row {id, question, answer[, solution][, instruction]} of
# data/<task>/<split>.jsonl. The user's turn is an instruction on how to state the answer, then the question: the
# question ends the prompt, so that a sliding window drops the instruction before the question when the answer
# begins. A row whose question carries its own instructions sets "instruction" to "" (the trace task does).

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
INSTRUCTION = ("Solve the problem step by step. Write the final answer at the end, after \"####\" "
               "(for example \"#### 42\") or inside \\boxed{}.")
PROBLEM_FIELDS = {"id": (str, int), "question": str, "answer": (str, int, float)}
PROBLEM_OPTIONAL = {"solution": str, "instruction": str}
EVAL_TASK = {"math": "math500"}  # tasks without a test split of their own
FEW_SHOT_SOURCE = {"math500": "math", "svamp": "gsm8k", "asdiv": "gsm8k"}  # benchmarks without a train split
MAKE = {"synthetic": "python -m data.synthetic", "trace": "python -m data.trace"}  # else python -m data.prepare


def user_message(row):
    instruction = row.get("instruction", INSTRUCTION)
    return {"role": "user", "content": f"{instruction}\n\n{row['question']}" if instruction else row["question"]}


def chat(row, shots=()):
    """The conversation that asks `row`: solved `shots` as earlier turns, then the question."""
    messages = []
    for shot in shots:
        messages += [user_message(shot), {"role": "assistant", "content": shot["solution"]}]
    return messages + [user_message(row)]


def build_prompt(tokenizer, row, shots=()):
    """Token ids of the prompt for `row`, ending where the assistant's answer begins."""
    return tokenizer.encode_chat(chat(row, shots), add_generation_prompt=True)[0]


def load_task(data_dir, task, split):
    """The problems of data_dir/<task>/<split>.jsonl, checked: fields of the right types, ids unique, at least one."""
    path = os.path.join(data_dir, task, f"{split}.jsonl")
    if not os.path.exists(path):
        fail(f"{path} not found (run `{MAKE.get(task, 'python -m data.prepare')}` first)")
    rows = read_jsonl(path, PROBLEM_FIELDS, PROBLEM_OPTIONAL)
    if not rows:
        fail(f"{path} holds no problems")
    seen = set()
    for row in rows:
        if row["id"] in seen:
            fail(f"{path}: problem id {row['id']!r} occurs more than once")
        seen.add(row["id"])
        row["answer"] = str(row["answer"])
    return rows


# ----------------------------------------------------------------------------------------------------------
# The accuracy check: generate answers, score them with data.answers.is_correct (the one definition of correct).

def pass_at_k(n, c, k):
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def answer_key(answer):
    """Answers that are the same number vote together ("1,200" and "1200.0")."""
    try:
        number = to_number(answer)
    except Exception:  # noqa: BLE001 -- a vote key must never crash an evaluation
        number = None
    return str(number) if number is not None else " ".join(answer.split())


RECORD_FIELDS = {"id": (str, int), "settings": dict, "correct": list, "majority_correct": bool,
                 "completion_tokens": list, "finished": list}


PER_COMPLETION = ("correct", "completions", "answers", "completion_tokens", "finished", "trajectories")


def check_record(record):
    lengths = {len(record[k]) for k in PER_COMPLETION if isinstance(record.get(k), list)}
    if len(lengths) != 1 or 0 in lengths:
        fail(f"the lists {', '.join(k for k in PER_COMPLETION if k in record)} must hold one entry per completion")


def read_records(path, fields=RECORD_FIELDS, optional=None):
    """Per-problem records of an evaluation, checked (UserError naming the file and line)."""
    return read_jsonl(path, fields, optional, check=check_record)


def read_results(path):
    """Records of an earlier (possibly interrupted) evaluation. A partial last line from a crash is dropped."""
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        data = f.read()
    if data and not data.endswith(b"\n"):
        with writing(path), open(path + ".tmp", "wb") as f:
            f.write(data[:data.rfind(b"\n") + 1])
        os.replace(path + ".tmp", path)
    return read_records(path)


def eval_settings(config, samples=1, temperature=0.0, few_shot=0, max_new_tokens=512, weights=None):
    """What an evaluation's records depend on besides the problem: records are only ever mixed with records of
    the same settings. weights: common.weights_id of the checkpoint, when the records go to a file."""
    settings = {"samples": samples, "temperature": temperature, "few_shot": few_shot,
                "max_new_tokens": max_new_tokens, "window": config.window, "sinks": config.sinks}
    return settings if weights is None else {**settings, "weights": weights}


def check_results(path, settings):
    """The records already in path, by problem id, made with exactly these settings; otherwise a UserError (and
    the file is left as it is)."""
    done = {}
    for r in read_results(path):
        old = r["settings"]
        if old.get("weights") != settings.get("weights"):
            fail(f"{path} holds records of other weights (id {old.get('weights') or 'not recorded'}, not "
                 f"{settings.get('weights') or 'given'}): another checkpoint with the same label, or this one "
                 "retrained; use another --out-dir")
        if old != settings:
            fail(f"{path} holds results made with settings {old}, not {settings}; use another --out-dir")
        done[r["id"]] = r
    return done


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_summary(path):
    """evaluate.py's summary.json, {label: {"tasks": {task: metrics}, "peak_memory_gb", "tokens_per_s", ...}},
    checked: anything else is a UserError naming the file."""
    summary = read_json(path)
    for label, entry in summary.items():
        if not label or not isinstance(entry, dict) or not isinstance(entry.get("tasks"), dict):
            fail(f"{path}: entry {label!r} must be an object with a \"tasks\" object")
        for task, metrics in entry["tasks"].items():
            if not (isinstance(metrics, dict) and isinstance(metrics.get("n_problems"), int) and "accuracy" in metrics
                    and all(v is None or _is_number(v) for v in metrics.values())):
                fail(f"{path}: {label} {task}: metrics must be an object of numbers with n_problems and accuracy")
        for key in ("peak_memory_gb", "tokens_per_s"):
            if not (entry.get(key) is None or _is_number(entry[key])):
                fail(f"{path}: {label}: {key} must be a number")
    return summary


def score(records, samples):
    """Aggregate per-problem records into task metrics."""
    if not records:
        return {"n_problems": 0, "accuracy": None}
    correct = [r["correct"] for r in records]
    metrics = {"n_problems": len(records),
               "accuracy": sum(sum(c) / len(c) for c in correct) / len(records)}  # greedy acc, or mean pass@1
    if samples > 1:
        ks = sorted({2 ** i for i in range(int(math.log2(samples)) + 1)} | {samples})
        for k in ks:
            metrics[f"pass@{k}"] = sum(pass_at_k(len(c), sum(c), k) for c in correct) / len(records)
        metrics[f"maj@{samples}"] = sum(r["majority_correct"] for r in records) / len(records)
    lengths = [t for r in records for t in r["completion_tokens"]]
    metrics["mean_completion_tokens"] = sum(lengths) / len(lengths)
    finished = [f for r in records for f in r["finished"]]
    metrics["truncated"] = 1 - sum(finished) / len(finished)  # completions that hit max_new_tokens
    answers = [a for r in records for a in r["answers"]]
    metrics["parsed"] = sum(a is not None for a in answers) / len(answers)  # completions with an answer to check
    return metrics


def completion_texts(tokenizer, tokens):
    """(finished, texts) of generated completions (token lists): whether each ended on a stop token, and its text
    without that token."""
    stops = set(tokenizer.stop_tokens)
    finished = [bool(t) and t[-1] in stops for t in tokens]
    return finished, [tokenizer.decode(t[:-1] if f else t) for t, f in zip(tokens, finished)]


@torch.inference_mode()
def evaluate_task(model, tokenizer, problems, max_new_tokens=512, batch_size=16, samples=1, temperature=0.0,
                  shots=(), out_path=None, seed=0, progress=True, desc="eval", trajectory=None, ckpt=None,
                  weights=None):
    """Generate answers for `problems` ({id, question, answer} dicts) and score them.

    samples > 1 draws that many completions per problem (use temperature > 0) and adds pass@k and maj@n.
    With out_path, per-problem records are appended to that JSONL and problems already there are skipped; ckpt
    (the checkpoint's path) and weights (its weights_id) are recorded with them, and records of other weights are
    refused.
    trajectory(prompt_ids, completion_ids, tokenizer, window) -> dict, when given, is recorded per completion
    (data.trace.trajectory: how a trace-task completion uses the window).
    Returns a metrics dict: accuracy, n_problems, mean_completion_tokens, generated_tokens, tokens_per_s, ...
    """
    settings = eval_settings(model.config, samples, temperature, len(shots), max_new_tokens, weights)
    done = {}
    if out_path is not None:
        done = check_results(out_path, settings)
        os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    todo = [p for p in problems if p["id"] not in done]
    prompts = {p["id"]: build_prompt(tokenizer, p, shots) for p in todo}
    todo.sort(key=lambda p: len(prompts[p["id"]]))  # similar lengths in a batch waste less left padding

    was_training = model.training
    model.eval()
    device = model.embed_tokens.weight.device
    generator = torch.Generator(device).manual_seed(seed) if temperature > 0 else None
    per_batch = max(1, batch_size // samples)  # a batch holds whole problems, each repeated `samples` times
    generated, gen_seconds = 0, 0.0
    out = open(out_path, "a", encoding="utf-8") if out_path is not None else None
    bar = tqdm(total=len(todo), desc=desc, disable=not progress, leave=False)
    try:
        for start in range(0, len(todo), per_batch):
            batch = todo[start:start + per_batch]
            rows = [prompts[p["id"]] for p in batch for _ in range(samples)]
            t0 = time.time()
            tokens, _ = generate(model, rows, max_new_tokens, temperature=temperature,
                                 stop_tokens=tokenizer.stop_tokens, generator=generator)
            if device.type == "cuda":
                torch.cuda.synchronize()
            gen_seconds += time.time() - t0
            generated += sum(len(t) for t in tokens)
            lines = []
            ends, texts = completion_texts(tokenizer, tokens)
            verdicts = is_correct_many(texts, [p["answer"] for p in batch for _ in range(samples)], SCORE_WORKERS)
            for i, p in enumerate(batch):
                outs, finished = tokens[i * samples:(i + 1) * samples], ends[i * samples:(i + 1) * samples]
                completions = texts[i * samples:(i + 1) * samples]
                answers = [find_answer(c)[0] for c in completions]
                correct = verdicts[i * samples:(i + 1) * samples]
                votes = collections.Counter(answer_key(a) for a in answers if a is not None)
                majority = votes.most_common(1)[0][0] if votes else None
                record = {"id": p["id"], "prompt": tokenizer.decode(prompts[p["id"]]), "reference": p["answer"],
                          "completions": completions, "answers": answers, "correct": correct,
                          "majority_correct": any(ok for a, ok in zip(answers, correct)
                                                  if a is not None and answer_key(a) == majority),
                          "completion_tokens": [len(t) for t in outs], "finished": finished, "settings": settings}
                if ckpt is not None:
                    record["ckpt"] = ckpt
                if trajectory is not None:
                    record["trajectories"] = [trajectory(prompts[p["id"]], t[:-1] if f else t, tokenizer,
                                                         model.config.window) for t, f in zip(outs, finished)]
                done[p["id"]] = record
                lines.append(json.dumps(record, ensure_ascii=False) + "\n")
            if out is not None:
                with writing(out_path):
                    out.write("".join(lines))
                    out.flush()
            bar.update(len(batch))
    finally:  # results so far are on disk; the caller's model goes back to the mode it was in
        bar.close()
        if out is not None:
            with writing(out_path):
                out.close()
        model.train(was_training)

    metrics = score([done[p["id"]] for p in problems if p["id"] in done], samples)
    metrics["generated_tokens"] = generated
    metrics["tokens_per_s"] = generated / gen_seconds if gen_seconds > 0 else None
    return metrics
