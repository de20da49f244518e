"""
Tests of rl.py: the loss math by hand, and whole RL runs of a toy byte-level model on a toy task.

    python -m pytest -q tests/test_rl.py
"""
import copy
import functools
import json
import math
import os
import shutil
import subprocess
import sys
import types

import pytest
import torch
from safetensors.torch import load_file

import model as model_module
import rl
from common import UserError, build_prompt, weights_id, write_jsonl
from data.answers import is_correct
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
    assert stats["clipped_high"] == 1 and stats["clipped_low"] == 1  # r=1.5 with A>0; r=0.5 with A<0
    assert stats["ratio"] == pytest.approx(1.5 + 0.9 + 1 + 0.5) and stats["ratio_max"] == pytest.approx(1.5)
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


def test_kl_k3_is_clamped_for_rare_tokens():
    # a token the policy finds likely but the reference finds nearly impossible (or the reverse): the log-ratio
    # is clamped to [-20, 20] and the term to 10, so the loss stays finite and small enough to train on
    lp = torch.tensor([0.0, -80.0, -1.0])
    ref = torch.tensor([-80.0, 0.0, -1.0])
    # d = ref - lp = -80 -> -20: exp(-20) + 20 - 1 = 19 -> 10; d = 80 -> 20: exp(20) - 21 -> 10; d = 0 -> 0
    assert rl.kl_k3(lp, ref).tolist() == pytest.approx([10.0, 10.0, 0.0])
    assert rl.kl_k3(torch.tensor([-1.0]), torch.tensor([-3.0])).item() == pytest.approx(math.exp(-2) + 2 - 1)


def test_truncated_importance_weights_by_hand():
    # injected mismatch: the sampler gave these tokens log-probs 1 nat lower / higher / equal / 3 nats lower
    old = torch.tensor([[-1.0, -1.0, -2.0, -0.5]])
    sampler = torch.tensor([[-2.0, 0.0, -2.0, -3.5]])
    weights, truncated = rl.truncated_is_weights(old, sampler, cap=2.0)
    assert weights[0].tolist() == pytest.approx([2.0, math.exp(-1), 1.0, 2.0])  # e^1 = 2.72 and e^3 capped at 2
    assert truncated.tolist() == [[True, False, False, True]]


def test_importance_weights_scale_each_tokens_loss():
    # the loss must weight tokens as the formula says: -w_t * min(r_t A, clip(r_t) A), token-mean
    lp = torch.tensor([[math.log(1.1), math.log(0.7), 0.0]], requires_grad=True)
    old = torch.zeros(1, 3)
    weights = torch.tensor([[2.0, 0.5, 1.0]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    loss, _ = rl.policy_loss(lp, old, torch.tensor([1.0]), mask, 0.2, 0.28, "token", is_weights=weights)
    # r = 1.1, 0.7, 1 with A = +1: none is clipped above (r < 1.28); r = 0.7 < 0.8 only binds for A < 0
    assert loss.item() == pytest.approx(-(2.0 * 1.1 + 0.5 * 0.7 + 1.0 * 1.0) / 3)
    loss.backward()
    assert lp.grad[0].tolist() == pytest.approx([-2.0 * 1.1 / 3, -0.5 * 0.7 / 3, -1.0 / 3])  # d(-w r A)/d lp


def test_algo_presets_and_overrides():
    base = ["--ckpt", "x"]
    args = rl.parse_args(base + ["--algo", "grpo"])
    assert (args.scale_std, args.aggregation, args.clip_low, args.clip_high, args.kl_beta, args.dynamic_sampling,
            args.overlong_cache) == (True, "grpo", 0.2, 0.2, 0.04, False, 0)
    args = rl.parse_args(base + ["--algo", "dapo", "--max-new-tokens", "100"])
    assert (args.scale_std, args.aggregation, args.clip_high, args.kl_beta, args.dynamic_sampling,
            args.overlong_cache) == (True, "token", 0.28, 0.0, True, 20)
    args = rl.parse_args(base + ["--algo", "drgrpo"])
    assert (args.scale_std, args.aggregation, args.clip_high, args.dynamic_sampling) == (False, "drgrpo", 0.2, False)
    # explicit flags win over the preset, both ways
    args = rl.parse_args(base + ["--algo", "grpo", "--clip-high", "0.3", "--no-scale-std", "--kl-beta", "0",
                                 "--dynamic-sampling", "--overlong-cache", "5"])
    assert (args.clip_high, args.scale_std, args.kl_beta, args.dynamic_sampling, args.overlong_cache) == \
        (0.3, False, 0.0, True, 5)
    settings = rl.algorithm_settings(args)
    assert settings["algo"] == "grpo" and settings["clip_high"] == 0.3 and settings["scale_std"] is False
    assert rl.parse_args(base + ["--old-logprobs", "sampler"]).tis_cap == 0  # nothing left to correct


def test_rewards_task_random_format():
    args = rl.parse_args(["--ckpt", "x", "--max-new-tokens", "10", "--overlong-cache", "0"])
    coin = __import__("random").Random(0)

    def reward(text, finished, length, rng):  # every completion answers a problem whose answer is 7
        return rl.reward_of(text, finished, length, is_correct(text, "7"), args, rng)

    assert reward("so #### 7", True, 3, coin) == (1.0, True)
    assert reward("so #### 8", True, 3, coin) == (0.0, False)
    args.reward = "format"
    assert reward("so #### 8", True, 3, coin) == (1.0, False)  # explicit answer, wrong
    assert reward("I think 7", True, 3, coin) == (0.0, True)  # right, but only the last number
    args.reward = "random"
    draws = [reward("#### 7", True, 3, coin) for _ in range(2000)]
    assert all(ok for _, ok in draws)  # the verdict is still the task's
    assert {r for r, _ in draws} == {0.0, 1.0} and abs(sum(r for r, _ in draws) / 2000 - 0.5) < 0.05
    again = __import__("random").Random(0)
    args.reward = "task"
    reward("#### 7", True, 3, again)  # the task reward draws no coin ...
    args.reward = "random"
    assert [reward("#### 7", True, 3, again)[0] for _ in range(5)] == \
        [r for r, _ in draws[:5]]  # ... so the coin sequence depends on the seed alone
    args.reward, args.format_reward, args.overlong_cache = "task", 0.5, 4
    assert reward("#### 7", True, 3, coin)[0] == pytest.approx(1.5)
    assert reward("#### 7", False, 10, coin)[0] == pytest.approx(-1.0 + 1.0)  # unfinished: no bonus


def test_make_batch_layout():
    inputs, doc_ids, targets, mask = rl.make_batch([[1, 2, 3], [4]], [[5, 6], [7, 8, 9]], "cpu")
    assert inputs.tolist() == [[1, 2, 3, 5], [4, 7, 8, 0]]
    assert targets[mask].tolist() == [5, 6, 7, 8, 9]
    assert doc_ids.tolist() == [[0, 0, 0, 0], [0, 0, 0, -1]]


def test_compiled_blocks_compile_once_for_micro_batches_of_any_shape(monkeypatch):
    """rl.py --compile pads every micro-batch's forward pass to --batch-size rows and a multiple of 128 positions: the
    compiled blocks are compiled once without gradients and once with them, whatever the micro-batches' lengths and
    numbers of rows, and the padding changes no log-probability. (The eager backend: dynamo's guards decide what is
    compiled again, as in test_generate's test_compiled_decoding_step_compiles_once_per_row_count.)"""
    torch._dynamo.reset()
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    model = Transformer(Config(window=4, sinks=1)).init_weights(0)
    eager = copy.deepcopy(model)
    model.compile_blocks()
    pad_to = rl.compiled_shape(types.SimpleNamespace(compile=True, batch_size=4))
    counters = torch._dynamo.utils.counters
    counters.clear()
    for rows, length in ((4, 10), (3, 17), (2, 5)):
        prompts = [[1 + (r + t) % 200 for t in range(3 + r)] for r in range(rows)]
        completions = [[2 + (r * t) % 200 for t in range(length - r)] for r in range(rows)]
        batch = rl.make_batch(prompts, completions, "cpu")
        with torch.no_grad():
            want, _ = rl.token_logprobs(eager, *batch, 0.7)
            got, _ = rl.token_logprobs(model, *batch, 0.7, pad_to=pad_to)
        torch.testing.assert_close(got, want)
        rl.token_logprobs(model, *batch, 0.7, pad_to=pad_to)[0].sum().backward()
    assert counters["stats"]["unique_graphs"] == 2


def test_compile_flag_compiles_decoding_once(toy, monkeypatch):
    """rl.py --compile compiles the decoding step as well as the training passes: over steps whose generation
    rounds carry ever fewer problems, the step is compiled once (continuous batching keeps all --gen-batch rows),
    the blocks once without gradients and once with them."""
    torch._dynamo.reset()
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    monkeypatch.setattr(model_module, "DECODE_COMPILE", False)
    counters = torch._dynamo.utils.counters
    counters.clear()
    log = run(toy, "compiled", "--task", "toy", "--steps", "3", "--seed", "0", "--compile", "--algo", "dapo",
              "--gen-batch", "64", "--max-gen-rounds", "3", "--overlong-cache", "0")
    assert model_module.DECODE_COMPILE
    assert sum(m["gen_rounds"] for m in log) > len(log)  # later rounds with fewer problems ran
    assert counters["stats"]["unique_graphs"] == 3


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
            "--group-size", "8", "--max-new-tokens", "3", "--batch-size", "64", "--warmup-steps", "1",
            "--eval-every", "0", *extra]
    rl.main(args)
    with open(toy / name / "metrics.jsonl") as f:
        return [json.loads(line) for line in f]


def test_reward_rises(toy):
    log = run(toy, "rise", "--task", "toy", "--steps", "20", "--lr", "2e-3", "--seed", "0", "--minibatches", "1")
    start = sum(m["accuracy"] for m in log[:3]) / 3
    end = sum(m["accuracy"] for m in log[-3:]) / 3
    assert start < 0.3, start
    assert end > start + 0.4, (start, end)
    assert all(m["logprob_diff_max"] < 1e-3 for m in log)  # generation and training compute the same model
    assert all(m["clip_frac"] == 0 for m in log)  # one on-policy update per batch: the ratio is exactly 1
    assert all(m["is_truncated"] == 0 and m["is_weight_mean"] == pytest.approx(1, abs=1e-3) for m in log)
    assert all(m["gen_s"] > 0 and m["train_s"] > 0 and m["score_s"] > 0 for m in log)
    # the split's parts are disjoint stretches of the step
    assert all(m["gen_s"] + m["score_s"] + m["logprob_s"] + m["train_s"] <= m["step_s"] for m in log)


def test_several_minibatches_make_the_clip_act(toy):
    # the default: 4 optimizer steps per rollout batch, so later minibatches see a moved policy
    log = run(toy, "minibatches", "--task", "toy", "--steps", "4", "--lr", "5e-3", "--seed", "0")
    assert all(m["updates"] == 4 for m in log if not m["skipped"])
    assert any(m["clip_frac_high"] > 0 for m in log) and any(m["ratio_max"] > 1.28 for m in log)
    assert all(m["clip_frac"] == pytest.approx(m["clip_frac_low"] + m["clip_frac_high"]) for m in log)


def test_sampler_mismatch_is_corrected(toy, monkeypatch):
    # inject a mismatch: the sampler reports every token's log-prob 1 nat lower than the model computes, so
    # pi_old / pi_sampler = e (2.72) everywhere: the weights are all truncated at the cap ...
    def lower(*a, **k):
        tokens, logprobs = rl_generate(*a, **k)
        return tokens, [[lp - 1.0 for lp in row] for row in logprobs]
    rl_generate = rl.generate_continuous
    monkeypatch.setattr(rl, "generate_continuous", lower)
    log = run(toy, "mismatch", "--task", "toy", "--steps", "2", "--lr", "1e-3", "--tis-cap", "2")
    assert all(m["logprob_diff_mean"] == pytest.approx(1.0, abs=1e-3) for m in log)
    assert all(m["is_truncated"] == 1.0 and m["is_weight_mean"] == pytest.approx(2.0) for m in log)
    # ... and with the sampler as pi_old, the ratio starts at e: every positive-advantage token is clipped above
    log = run(toy, "mismatch-sampler", "--task", "toy", "--steps", "1", "--lr", "1e-3", "--old-logprobs", "sampler",
              "--minibatches", "1")
    assert log[0]["ratio_mean"] == pytest.approx(math.e, rel=1e-3) and log[0]["logprob_diff_mean"] is None
    assert log[0]["clip_frac_high"] > 0.3 and log[0]["clip_frac_low"] == 0


def test_reward_rises_with_ppo_epochs_and_kl(toy):
    log = run(toy, "ppo", "--task", "toy", "--steps", "4", "--lr", "2e-3", "--ppo-epochs", "2", "--minibatches",
              "2", "--kl-beta", "0.01", "--algo", "grpo", "--eval-every", "2")
    assert any(m["clip_frac"] > 0 for m in log)  # reused batches move the ratio and get clipped
    assert all(m["updates"] == 4 for m in log if not m["skipped"])
    assert "eval_accuracy" in log[1] and "eval_accuracy" not in log[0] and log[1]["eval_s"] > 0
    assert log[0]["kl"] > 0 and log[0]["kl"] < 1
    with open(toy / "ppo" / "meta.json") as f:
        algorithm = json.load(f)["algorithm"]
    assert algorithm["algo"] == "grpo" and algorithm["kl_beta"] == 0.01 and algorithm["aggregation"] == "grpo"


def state(path):
    return load_file(os.path.join(path, "model.safetensors"))


@pytest.mark.parametrize("dynamic", ["--dynamic-sampling", "--no-dynamic-sampling"])
def test_all_equal_rewards_change_nothing(toy, dynamic):
    # the answer has more digits than fit in 3 tokens: every reward is 0, with or without dynamic sampling
    log = run(toy, f"never{dynamic}", "--task", "never", "--steps", "2", "--lr", "1e-2", "--weight-decay", "0.1",
              "--overlong-cache", "0", dynamic)
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
    with pytest.raises(UserError, match="--group-size"):
        run(toy, "bad", "--task", "toy", "--group-size", "1")
    with pytest.raises(UserError, match="not found"):
        run(toy, "bad", "--task", "nope")
    with pytest.raises(ValueError, match="does not exist"):
        rl.main(["--ckpt", str(toy / "missing"), "--task", "toy", "--data-dir", str(toy / "data"), "--eval-every", "0"])


def test_never_overwrites_a_checkpoint(toy):
    before = state(toy / "sft")
    with pytest.raises(UserError, match="starting checkpoint"):  # --out == --ckpt would destroy the start model
        rl.main(["--ckpt", str(toy / "sft"), "--out", str(toy / "sft" / "."), "--task", "toy", "--data-dir",
                 str(toy / "data"), "--eval-every", "0", "--device", "cpu"])
    run(toy, "once", "--task", "toy", "--steps", "1")
    with open(toy / "once" / "metrics.jsonl") as f:
        logged = f.read()
    with pytest.raises(UserError, match="already holds a checkpoint"):  # a finished run, without --resume
        run(toy, "once", "--task", "toy", "--steps", "1")
    shutil.copytree(toy / "sft", toy / "other-sft")
    with pytest.raises(UserError, match="already holds a checkpoint"):  # an SFT checkpoint as --out
        run(toy, "other-sft", "--task", "toy", "--steps", "1")
    with open(toy / "once" / "metrics.jsonl") as f:
        assert f.read() == logged
    after = state(toy / "sft")
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_trainer_state_is_read_as_data_only(toy, tmp_path):
    # a crafted trainer_state.pt whose unpickling would run a command: refused with one line, nothing runs
    run(toy, "crafted", "--task", "toy", "--steps", "1")
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))
    torch.save({"step": 1, "payload": Payload()}, toy / "crafted" / "trainer_state.pt")
    with pytest.raises(UserError, match="trainer_state.pt is not a readable trainer state"):
        run(toy, "crafted", "--task", "toy", "--steps", "2", "--resume")
    assert not marker.exists()


def test_trace_task_logs_how_rollouts_use_the_window(toy):
    from data import trace
    rows = trace.make_split("train", 16, registers=2, steps=(2, 3), filler=(4,))
    write_jsonl(str(toy / "data" / "trace" / "train.jsonl"), rows)
    log = run(toy, "trace", "--task", "trace", "--steps", "1", "--group-size", "2", "--prompts-per-step", "4",
              "--no-dynamic-sampling")
    # the toy model answers one digit: no step lines, no copies, so nothing reaches past the window
    assert log[0]["fits_window"] == 1.0 and log[0]["window_style"] == 0.0 and log[0]["full_style"] == 0.0
    assert log[0]["max_distance_mean"] is None and log[0]["accuracy_not_fits"] is None


def test_trajectory_metrics_by_hand():
    m = {k: 0.0 for k in rl.TRAJECTORY_SUMS + ("correct",)}
    for style, fits, correct, restated, distance in [("window", True, True, 3.0, 40), ("full", False, False, 0.0, 90),
                                                      ("full", True, False, 0.0, 50), (None, True, True, None, None)]:
        rl.count_trajectory({"style": style, "fits": fits, "restatements_per_step": restated,
                             "max_distance": distance}, correct, m)
        m["correct"] += correct
    got = rl.trajectory_metrics(m)
    assert got == {"fits_window": 0.75, "window_style": 0.25, "full_style": 0.5, "restatements_per_step": 1.0,
                   "max_distance_mean": 60.0, "accuracy_fits": pytest.approx(2 / 3), "accuracy_not_fits": 0.0}


def test_solvable_from_keeps_problems_solved_sometimes(toy, tmp_path):
    weights = weights_id(str(toy / "sft"))

    def records(path, verdicts, weights=weights):
        write_jsonl(str(path), [{"id": i, "settings": {"weights": weights}, "correct": c, "majority_correct": c[0],
                                 "completion_tokens": [1] * len(c), "finished": [True] * len(c)}
                                for i, c in verdicts.items()])
        return str(path)
    # toy-0 always right, toy-1 never, toy-2 half the time, toy-3 not sampled: only toy-2 can teach anything
    path = records(tmp_path / "r.jsonl", {"toy-0": [True, True], "toy-1": [False, False], "toy-2": [True, False]})
    assert [p["id"] for p in rl.solvable_problems(toy_problems(4), path, weights)] == ["toy-2"]
    log = run(toy, "solvable", "--task", "toy", "--steps", "1", "--solvable-from", path)
    assert len(log) == 1
    with pytest.raises(UserError, match="other weights"):
        rl.solvable_problems(toy_problems(4), records(tmp_path / "o.jsonl", {"toy-2": [True, False]}, "x"), weights)
    with pytest.raises(UserError, match="one completion per problem"):
        rl.solvable_problems(toy_problems(4), records(tmp_path / "one.jsonl", {"toy-2": [True]}), weights)
    with pytest.raises(UserError, match="no training problem"):
        rl.solvable_problems(toy_problems(4), records(tmp_path / "none.jsonl", {"toy-0": [True, True]}), weights)
    with pytest.raises(UserError, match="not found"):
        rl.solvable_problems(toy_problems(4), str(tmp_path / "missing.jsonl"), weights)


def test_rl_step_benchmark_smoke(tmp_path):
    """bench/rl_step.py end to end on the CPU: a tiny Hugging Face source converted in each tree (here this tree
    twice), a few RL steps each, the per-step table and the kept metrics."""
    from test_bad_input import hf_source
    hf_source(tmp_path / "hf")
    write_jsonl(str(tmp_path / "data" / "gsm8k" / "train.jsonl"), toy_problems(16))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, os.path.join(root, "bench", "rl_step.py"), "--before", root, "--smoke",
                             "--src", str(tmp_path / "hf"), "--data-dir", str(tmp_path / "data"), "--steps", "3",
                             "--runs", "before,this", "--work", str(tmp_path / "work"), "--keep",
                             str(tmp_path / "keep")], cwd=root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| before") or line.startswith("| this")]
    assert len(rows) == 2, result.stdout
    for name in ("before", "this"):
        with open(tmp_path / "keep" / f"{name}.jsonl") as f:
            assert [json.loads(line)["step"] for line in f] == [1, 2, 3]
