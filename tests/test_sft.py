"""
Tests for sft.py on a toy byte-level model: the loss falls, only assistant tokens are trained, packing changes
nothing, an interrupted run resumes exactly, bad input gives one clear line.

    python -m pytest -q tests/test_sft.py
"""
import functools
import json
import os
import subprocess
import sys

import pytest
import torch

import sft
from model import Config, Transformer, head_loss, load_checkpoint, save_checkpoint
from tokenizer import toy_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBLEMS = [(a, b) for a in range(1, 7) for b in range(2, 5)]


def write_problems(path, n=len(PROBLEMS)):
    with open(path, "w") as f:
        for i, (a, b) in enumerate(PROBLEMS[:n]):
            f.write(json.dumps({"id": f"toy-{i}", "question": f"What is {a} + {b}?",
                                "solution": f"{a} + {b} = {a + b}\n#### {a + b}", "answer": str(a + b)}) + "\n")
    return str(path)


def write_chats(path):
    """Short chat examples (no long instruction), so a packed row of 128 bytes holds a few of them."""
    with open(path, "w") as f:
        for a, b in PROBLEMS:
            f.write(json.dumps({"messages": [{"role": "user", "content": f"{a}*{b}?"},
                                             {"role": "assistant", "content": f"{a}*{b}={a * b}"}]}) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sft")
    tok = toy_tokenizer()
    model = Transformer(Config(vocab_size=tok.vocab_size, window=32, sinks=2)).init_weights(0)
    save_checkpoint(tmp / "toy", model, tok, {"stage": "init"})
    return tmp, str(tmp / "toy"), write_chats(tmp / "chats.jsonl")


def run_args(ckpt, data, out, *extra):
    return ["--ckpt", ckpt, "--data", data, "--out", str(out), "--seq-len", "128", "--batch-size", "2",
            "--val-size", "2", "--eval-limit", "0", "--warmup-steps", "2", "--lr", "3e-3", *extra]


def losses(out):
    with open(os.path.join(out, sft.METRICS_FILE)) as f:
        rows = [json.loads(line) for line in f]
    return [r["loss"] for r in rows if "loss" in r], rows


def examples(tok, n=3):
    rows = [{"question": f"What is {a} + {b}?", "solution": f"{a} + {b} = {a + b}\n#### {a + b}"}
            for a, b in PROBLEMS[:n]]
    return sft.tokenize(rows, tok, 10_000)[0]


def test_pack_layout():
    tok = toy_tokenizer()
    exs = examples(tok, 3)
    lengths = [len(ids) for ids, _ in exs]
    seq_len = lengths[0] + lengths[1] + 5  # two fit in the first row, the third starts a second row
    idx, targets, doc_ids = sft.pack(exs, seq_len)
    assert idx.shape == (2, seq_len)
    assert idx[0, :lengths[0]].tolist() == exs[0][0]
    assert doc_ids[0].tolist() == [0] * lengths[0] + [1] * lengths[1] + [-1] * 5
    assert doc_ids[1, :lengths[2]].eq(0).all() and doc_ids[1, lengths[2]:].eq(-1).all()
    # No target crosses a document boundary or lands on padding.
    assert targets[0, lengths[0] - 1] == -1 and targets[0, -5:].eq(-1).all()


def test_targets_are_exactly_the_assistant_turn():
    tok = toy_tokenizer()
    (ids, mask), = examples(tok, 1)
    _, targets, _ = sft.pack([(ids, mask)], len(ids))
    kept = targets[targets >= 0].tolist()
    assert kept[-1] == tok.eot_id
    assert tok.decode(kept[:-1]) == "1 + 2 = 3\n#### 3"


def test_masked_positions_get_no_gradient():
    tok = toy_tokenizer()
    model = Transformer(Config(vocab_size=tok.vocab_size, window=16, sinks=1)).init_weights(0)
    idx, targets, doc_ids = sft.pack(examples(tok, 3), 1024)
    logits = model(idx, doc_ids=doc_ids)
    logits.retain_grad()
    torch.nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1), ignore_index=-1,
                                      reduction="sum").backward()
    grad_norm = logits.grad.abs().sum(-1)
    assert grad_norm[targets < 0].max() == 0
    assert grad_norm[targets >= 0].min() > 0
    # and the step's loss ignores whatever token sits at a masked position's target slot
    base = sft.loss_sum(model, idx, targets, doc_ids)
    changed = targets.clone()
    changed[(targets < 0) & (doc_ids >= 0)] = -1
    assert torch.equal(base, sft.loss_sum(model, idx, changed, doc_ids))


@functools.cache
def compiled_head_loss():  # one compiled function for every test that needs it: compiling takes seconds
    return sft.compiled_head_loss()


@pytest.mark.parametrize("tie", [True, False])
def test_loss_paths_match_log_softmax_of_full_logits(tie):
    """The model's loss path and model.head_loss, eager and compiled, give the loss and the gradients of the plain
    formula: log-softmax of the full logits, summed at the kept targets. The rows hold prompt tokens, document
    boundaries and padding, all with target -1."""
    tok = toy_tokenizer()
    model = Transformer(Config(vocab_size=tok.vocab_size, window=16, sinks=1, tie_embeddings=tie)).init_weights(0)
    exs = examples(tok, 3)
    idx, targets, doc_ids = sft.pack(exs, len(exs[0][0]) + len(exs[1][0]) + 5)  # two rows: 2 documents, then 1
    assert (targets < 0).any() and (targets >= 0).any() and (doc_ids < 0).any()
    params = list(model.parameters())

    def loss_and_grads(loss):
        return loss.detach(), torch.autograd.grad(loss, params)

    logprobs = torch.log_softmax(model(idx, doc_ids=doc_ids), dim=-1)
    kept = targets >= 0
    picked = logprobs.gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)
    ref_loss, ref_grads = loss_and_grads(-(picked * kept).sum())
    for loss_fn in (None, head_loss, compiled_head_loss()):
        loss, grads = loss_and_grads(sft.loss_sum(model, idx, targets, doc_ids, loss_fn))
        torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-5)
        for g, ref in zip(grads, ref_grads):
            torch.testing.assert_close(g, ref, rtol=1e-5, atol=1e-6)


def test_packed_batch_equals_examples_one_by_one():
    tok = toy_tokenizer()
    torch.manual_seed(0)
    exs = examples(tok, 4)
    cfg = Config(vocab_size=tok.vocab_size, window=24, sinks=2)  # the window is shorter than each example
    packed = sft.pack(exs, 2048)
    singles = [sft.pack([e], len(e[0])) for e in exs]
    assert packed[0].shape[0] == 1 and len(singles) == 4
    n_targets = int((packed[1] >= 0).sum())
    assert n_targets == sum(int((s[1] >= 0).sum()) for s in singles)

    results = []
    for batches in ([packed], singles):  # one packed micro-batch vs four accumulated micro-batches
        model = Transformer(cfg).init_weights(0)
        # Plain SGD, so the update is the gradient itself (Adam's first step would amplify float noise).
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        before = torch.cat([p.detach().flatten() for p in model.parameters()])
        loss, _ = sft.train_step(model, optimizer, batches, n_targets, 1.0, 0.0, torch.device("cpu"))
        results.append((loss, before - torch.cat([p.detach().flatten() for p in model.parameters()])))
    (loss_a, grad_a), (loss_b, grad_b) = results
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_a, grad_b, rtol=1e-4, atol=1e-6)


def test_loss_falls_and_checkpoint_loads(setup):
    tmp, ckpt, data = setup
    out = tmp / "falls"
    sft.main(run_args(ckpt, data, out, "--steps", "20", "--eval-every", "10", "--window", "16"))
    train_losses, rows = losses(out)
    assert len(train_losses) == 20
    assert sum(train_losses[-3:]) / 3 < 0.7 * sum(train_losses[:3]) / 3
    val_losses = [r["val_loss"] for r in rows if "val_loss" in r]
    assert len(val_losses) == 2 and rows[-1]["step"] == 20
    model, _, meta = load_checkpoint(str(out))
    assert model.config.window == 16 and model.config.sinks == 2
    assert meta["stage"] == "sft" and meta["parent"] == os.path.abspath(ckpt) and meta["step"] == 20
    assert meta["args"]["window"] == "16" and "loss" in meta["metrics"]


def test_resume_continues_like_an_uninterrupted_run(setup, monkeypatch):
    tmp, ckpt, data = setup
    common = ("--steps", "6", "--save-every", "3", "--eval-every", "0", "--window", "8")
    sft.main(run_args(ckpt, data, tmp / "straight", *common))
    expected, _ = losses(tmp / "straight")

    real_step, calls = sft.train_step, []

    def crashing_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:  # step 5, after the step-3 checkpoint and one step past it
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(sft, "train_step", crashing_step)
    with pytest.raises(KeyboardInterrupt):
        sft.main(run_args(ckpt, data, tmp / "resumed", *common))
    monkeypatch.setattr(sft, "train_step", real_step)
    sft.main(run_args(ckpt, data, tmp / "resumed", *common, "--resume"))
    got, rows = losses(tmp / "resumed")
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4, 5, 6]  # step 4's pre-crash line is not repeated
    torch.testing.assert_close(torch.tensor(got), torch.tensor(expected), rtol=1e-5, atol=1e-6)


def test_bad_input(setup, tmp_path):
    _, ckpt, data = setup
    with pytest.raises(ValueError, match="convert.py"):
        sft.main(["--ckpt", str(tmp_path / "missing"), "--data", data])
    with pytest.raises(ValueError, match="--window"):
        sft.main(["--ckpt", ckpt, "--data", data, "--window", "0"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "solution": "s"}\n{"question": \n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        sft.main(["--ckpt", ckpt, "--data", str(bad), "--out", str(tmp_path / "o")])
    bad.write_text('{"messages": [{"role": "user"}]}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        sft.main(["--ckpt", ckpt, "--data", str(bad), "--out", str(tmp_path / "o")])
    with pytest.raises(ValueError, match="not found"):
        sft.main(["--ckpt", ckpt, "--data", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o")])
    # The command line prints one line, no traceback.
    proc = subprocess.run([sys.executable, "sft.py", "--ckpt", ckpt, "--window", "0"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == ["error: --window must be a positive integer or none, got '0'"]


def test_gsm8k_rows_with_accuracy_check(setup, tmp_path):
    _, ckpt, _ = setup
    data = write_problems(tmp_path / "gsm.jsonl")
    sft.main(run_args(ckpt, data, tmp_path / "out", "--steps", "1", "--seq-len", "256", "--batch-size", "1",
                      "--eval-limit", "1", "--eval-max-new-tokens", "2"))
    train_losses, rows = losses(tmp_path / "out")
    assert len(train_losses) == 1 and "val_loss" in rows[-1]
    assert rows[-1]["eval_accuracy"] == 0.0


def test_two_processes_match_one(setup, tmp_path):
    """torchrun with 2 CPU processes (gloo) takes the same steps as one process with the same global batch."""
    _, ckpt, data = setup
    common = ["--steps", "2", "--eval-every", "0", "--device", "cpu", "--window", "8"]
    sft.main(run_args(ckpt, data, tmp_path / "one", *common, "--grad-accum", "2"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "sft.py", *run_args(ckpt, data, tmp_path / "two", *common, "--batch-size", "1",
                                               "--grad-accum", "2")],
                          cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    one, _ = losses(tmp_path / "one")
    two, _ = losses(tmp_path / "two")
    torch.testing.assert_close(torch.tensor(two), torch.tensor(one), rtol=1e-5, atol=1e-6)
