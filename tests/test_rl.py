"""
Tests of rl.py: the loss math by hand, and whole RL runs of a toy byte-level model on a toy task.

    python -m pytest -q tests/test_rl.py
"""
import json
import math
import os

import pytest
import torch
from safetensors.torch import load_file

import rl
from common import UserError, build_prompt, write_jsonl
from model import Config, Transformer, save_checkpoint
from tokenizer import toy_tokenizer


# ---- pure functions ------------------------------------------------------------------------------------

def test_advantages_zero_mean_per_group():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0])
    for scale in (False, True):
        adv = rl.group_advantages(rewards, 4, scale_by_std=scale).view(3, 4)
        assert torch.allclose(adv.mean(1), torch.zeros(3), atol=1e-6)
        assert torch.equal(adv[1], torch.zeros(4))  # an all-equal group teaches nothing
    assert torch.allclose(rl.group_advantages(rewards, 4)[:4], torch.tensor([0.5, -0.5, -0.5, 0.5]))
    std = torch.tensor([1.0, 0.0, 0.0, 1.0]).std()
    assert torch.allclose(rl.group_advantages(rewards, 4, scale_by_std=True)[:4],
                          torch.tensor([0.5, -0.5, -0.5, 0.5]) / (std + 1e-6))


def test_informative_groups_drop_all_equal():
    rewards = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.5, 0.5])
    assert rl.informative_groups(rewards, 2).tolist() == [False, True, False, True, False]


def test_overlong_penalty():
    assert rl.overlong_penalty(50, 100, 0) == 0.0
    assert rl.overlong_penalty(80, 100, 20) == 0.0
    assert rl.overlong_penalty(90, 100, 20) == pytest.approx(-0.5)
    assert rl.overlong_penalty(100, 100, 20) == pytest.approx(-1.0)


def test_clipped_loss_and_aggregations_by_hand():
    # two sequences: 3 completion tokens (A = +1) and 1 completion token (A = -2); one padding slot
    old = torch.zeros(2, 3)
    lp = torch.tensor([[math.log(1.5), math.log(0.9), 0.0], [math.log(0.5), 0.0, 0.0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    adv = torch.tensor([1.0, -2.0])
    # ratios 1.5, 0.9, 1, 0.5; per-token -min(r A, clip(r) A) with clip range [0.8, 1.28]:
    #   A=+1: r=1.5 -> clipped 1.28 -> -1.28; r=0.9 -> -0.9; r=1 -> -1
    #   A=-2: r=0.5 -> min(-1, -1.6) = -1.6 (the pessimistic clipped term) -> +1.6
    per_token = [-1.28, -0.9, -1.0, 1.6]
    loss, stats = rl.policy_loss(lp, old, adv, mask, 0.2, 0.28, "token")
    assert loss.item() == pytest.approx(sum(per_token) / 4)
    assert stats["clipped"] == 2
    loss, _ = rl.policy_loss(lp, old, adv, mask, 0.2, 0.28, "grpo")
    assert loss.item() == pytest.approx((sum(per_token[:3]) / 3 + per_token[3]) / 2)
    loss, _ = rl.policy_loss(lp, old, adv, mask, 0.2, 0.28, "drgrpo", max_len=10)
    assert loss.item() == pytest.approx(sum(per_token) / (2 * 10))
    # a global normaliser (other micro-batches / ranks) replaces the local count
    loss, _ = rl.policy_loss(lp, old, adv, mask, 0.2, 0.28, "token", normaliser=8.0)
    assert loss.item() == pytest.approx(sum(per_token) / 8)
    # gradient of the unclipped token A=+1, r=0.9: d(-r A)/d lp = -r A = -0.9, divided by 4 tokens
    lp.requires_grad_(True)
    rl.policy_loss(lp, old, adv, mask, 0.2, 0.28, "token")[0].backward()
    assert lp.grad[0].tolist() == pytest.approx([0.0, -0.9 / 4, -1.0 / 4])
    assert lp.grad[1, 0].item() == 0.0  # clipped: no gradient


def test_kl_k3():
    lp, ref = torch.tensor([math.log(0.5), math.log(0.2)]), torch.tensor([math.log(0.25), math.log(0.2)])
    assert rl.kl_k3(lp, ref).tolist() == pytest.approx([0.5 - math.log(0.5) - 1, 0.0])
    old = torch.zeros(1, 2)
    loss, stats = rl.policy_loss(old.clone(), old, torch.tensor([0.0]), torch.ones(1, 2, dtype=torch.bool),
                                 ref_logprobs=torch.tensor([[math.log(0.5), 0.0]]), kl_beta=0.1)
    assert loss.item() == pytest.approx(0.1 * (0.5 - math.log(0.5) - 1) / 2)
    assert stats["kl"] == pytest.approx(0.5 - math.log(0.5) - 1)


def test_make_batch_layout():
    inputs, doc_ids, targets, mask = rl.make_batch([[1, 2, 3], [4]], [[5, 6], [7, 8, 9]], "cpu")
    assert inputs.tolist() == [[1, 2, 3, 5], [4, 7, 8, 0]]
    assert targets[mask].tolist() == [5, 6, 7, 8, 9]
    assert doc_ids.tolist() == [[0, 0, 0, 0], [0, 0, 0, -1]]


# ---- whole runs on a toy task -------------------------------------------------------------------------
# The task: every answer is the digit 7. A toy byte model is first taught (a few SFT steps) to answer with one
# uniformly random digit, so RL starts at about 10% reward with plenty of informative groups, and has only
# to move probability onto one token: a clear, seed-stable rise within a few dozen steps.
# The problems carry an empty instruction: the bare question, without the long default one, which would only
# make the test slow.

def toy_problems(n, answer="7"):
    return [{"id": f"toy-{i}", "question": f"P{i:02d}: digit?", "solution": answer, "answer": answer,
             "instruction": ""} for i in range(n)]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("rl")
    tok = toy_tokenizer()
    torch.manual_seed(0)
    # the prompts are longer than the window, so generation runs through the ring cache
    model = Transformer(Config(vocab_size=tok.vocab_size, window=16, sinks=2)).init_weights(0)
    problems = toy_problems(32)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(25):  # SFT to "one random digit, then end of turn"
        rows, masks = [], []
        for p in problems[:16]:
            prompt = build_prompt(tok, p)
            digit = str(int(torch.randint(0, 10, (1,), generator=g)))
            rows.append(prompt + tok.encode(digit) + [tok.eot_id])
            masks.append([False] * (len(prompt) - 1) + [True, True])
        x = torch.tensor(rows)
        logits = model(x[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits[torch.tensor(masks)], x[:, 1:][torch.tensor(masks)])
        opt.zero_grad()
        loss.backward()
        opt.step()
    save_checkpoint(str(root / "sft"), model, tok, {"stage": "sft", "parent": None, "args": {}, "metrics": {}})
    write_jsonl(str(root / "data" / "toy" / "train.jsonl"), problems)
    write_jsonl(str(root / "data" / "toy" / "test.jsonl"), toy_problems(8))
    write_jsonl(str(root / "data" / "never" / "train.jsonl"), toy_problems(32, answer="123456789"))
    return root


def run(toy, name, *extra):
    args = ["--ckpt", str(toy / "sft"), "--data-dir", str(toy / "data"), "--out", str(toy / name),
            "--device", "cpu", "--no-progress", "--prompts-per-step", "8",
            "--group-size", "8", "--max-new-tokens", "3", "--micro-batch", "64", "--warmup-steps", "1",
            "--eval-every", "0", *extra]
    rl.main(args)
    with open(toy / name / "metrics.jsonl") as f:
        return [json.loads(line) for line in f]


def test_reward_rises(toy):
    log = run(toy, "rise", "--task", "toy", "--steps", "20", "--lr", "2e-3", "--seed", "0")
    start = sum(m["accuracy"] for m in log[:3]) / 3
    end = sum(m["accuracy"] for m in log[-3:]) / 3
    assert start < 0.3, start
    assert end > start + 0.4, (start, end)
    assert all(m["logprob_diff_max"] < 1e-3 for m in log)  # generation and training compute the same model
    assert all(m["clip_frac"] == 0 for m in log)  # one on-policy update per batch: the ratio is exactly 1


def test_reward_rises_with_ppo_epochs_and_kl(toy):
    log = run(toy, "ppo", "--task", "toy", "--steps", "4", "--lr", "2e-3", "--ppo-epochs", "2", "--minibatches",
              "2", "--kl-beta", "0.01", "--aggregation", "grpo", "--scale-std", "--no-dynamic-sampling",
              "--eval-every", "2")
    assert any(m["clip_frac"] > 0 for m in log)  # reused batches move the ratio and get clipped
    assert all(m["updates"] == 4 for m in log if not m["skipped"])
    assert "eval_accuracy" in log[1] and "eval_accuracy" not in log[0]
    assert log[0]["kl"] > 0 and log[0]["kl"] < 1


def state(path):
    return load_file(os.path.join(path, "model.safetensors"))


@pytest.mark.parametrize("dynamic", ["--dynamic-sampling", "--no-dynamic-sampling"])
def test_all_equal_rewards_change_nothing(toy, dynamic):
    # the answer has more digits than fit in 3 tokens: every reward is 0, with or without dynamic sampling
    log = run(toy, f"never{dynamic}", "--task", "never", "--steps", "2", "--lr", "1e-2", "--weight-decay", "0.1",
              dynamic)
    assert all(m["skipped"] and m["updates"] == 0 and m["reward"] == 0 for m in log)
    assert log[0]["groups_kept"] == (0 if dynamic == "--dynamic-sampling" else 8)
    before, after = state(toy / "sft"), state(toy / f"never{dynamic}")
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_resume_continues_exactly(toy):
    straight = run(toy, "straight", "--task", "toy", "--steps", "3", "--lr", "2e-3")
    run(toy, "resume", "--task", "toy", "--steps", "2", "--lr", "2e-3")
    log = run(toy, "resume", "--task", "toy", "--steps", "3", "--lr", "2e-3", "--resume")
    assert [m["step"] for m in log] == [1, 2, 3]
    assert log[2]["reward"] == straight[2]["reward"] and log[2]["grad_norm"] == straight[2]["grad_norm"]
    a, b = state(toy / "straight"), state(toy / "resume")
    assert all(torch.equal(a[k], b[k]) for k in a)
    with open(toy / "resume" / "meta.json") as f:
        meta = json.load(f)
    assert meta["stage"] == "rl" and meta["metrics"]["step"] == 3 and meta["parent"] == str(toy / "sft")


def test_bad_input_is_one_line(toy):
    with pytest.raises(SystemExit, match="error: --group-size"):
        run(toy, "bad", "--task", "toy", "--group-size", "1")
    with pytest.raises(UserError, match="not found"):
        run(toy, "bad", "--task", "nope")
    with pytest.raises(ValueError, match="does not exist"):
        rl.main(["--ckpt", str(toy / "missing"), "--task", "toy", "--data-dir", str(toy / "data"), "--eval-every", "0"])
