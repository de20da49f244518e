"""
Tests for evaluate.py on a tiny random model and a handful of synthetic problems: end to end, output files,
resume, window override, and the pass@k estimator.

    python -m pytest -q tests/test_evaluate.py
"""
import json
import math

import pytest

import common
import evaluate
from common import UserError, write_jsonl
from data.synthetic import make_split
from model import Config, Transformer, save_checkpoint
from tokenizer import toy_tokenizer

@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval")
    tok = toy_tokenizer()
    model = Transformer(Config(vocab_size=tok.vocab_size, dim=32, n_layers=1, n_heads=2, n_kv_heads=1,
                               hidden_dim=64, window=16, sinks=2)).init_weights(seed=0)
    save_checkpoint(tmp / "tiny", model, tok, {"stage": "test"})
    test = make_split("test", 5, gaps=(0, 20))
    write_jsonl(str(tmp / "data" / "synthetic" / "test.jsonl"), test)
    write_jsonl(str(tmp / "data" / "synthetic" / "train.jsonl"), make_split("train", 5, gaps=(0,)))
    return tmp, model, tok, test


def run_cli(tmp, *extra):
    """Run evaluate.py's main() in this process (a subprocess would pay torch's import time on every call)."""
    argv = ["evaluate.py", "--ckpt", str(tmp / "tiny"), "--tasks", "synthetic", "--data-dir", str(tmp / "data"),
            "--out-dir", str(tmp / "out"), "--max-new-tokens", "12", "--batch-size", "4", *extra]
    evaluate.main(argv[1:])


def read_records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_cli_end_to_end_and_resume(setup, capsys):
    tmp, _, _, test = setup
    results = tmp / "out" / "tiny" / "synthetic.jsonl"
    run_cli(tmp, "--limit", "3")
    records = read_records(results)
    assert sorted(r["id"] for r in records) == sorted(r["id"] for r in test[:3])
    assert {"prompt", "completions", "answers", "correct"} <= set(records[0])
    summary = json.loads((tmp / "out" / "summary.json").read_text())
    assert summary["tiny"]["tasks"]["synthetic"]["n_problems"] == 3
    assert "| tiny |" in (tmp / "out" / "summary.md").read_text()

    capsys.readouterr()
    run_cli(tmp, "--limit", "3")  # everything is already there: no generation at all
    assert "generated_tokens 0" in capsys.readouterr().out
    assert len(read_records(results)) == 3

    run_cli(tmp)  # the remaining two problems only
    assert sorted(r["id"] for r in read_records(results)) == sorted(r["id"] for r in test)

    with pytest.raises(UserError, match="settings"):  # other settings never mix into old results
        run_cli(tmp, "--max-new-tokens", "5")


def test_summary_keeps_what_another_evaluation_wrote_meanwhile(setup, monkeypatch, tmp_path):
    """Two evaluations into one --out-dir (two run.sh side by side): the entries the other one writes while this
    one generates are merged, not overwritten by the summary this one read at its start."""
    tmp, _, _, _ = setup
    out = tmp_path / "out"
    other = {"other": {"tasks": {"synthetic": {"n_problems": 1, "accuracy": 1.0}}}}

    def evaluate_task_while_another_writes(*args, **kwargs):
        (out / "summary.json").write_text(json.dumps(other))
        return real_evaluate_task(*args, **kwargs)

    real_evaluate_task = evaluate.evaluate_task
    monkeypatch.setattr(evaluate, "evaluate_task", evaluate_task_while_another_writes)
    run_cli(tmp, "--limit", "2", "--out-dir", str(out))
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"other", "tiny"}
    assert summary["tiny"]["tasks"]["synthetic"]["n_problems"] == 2


def test_cli_window_override_few_shot_and_bad_args(setup):
    tmp = setup[0]
    run_cli(tmp, "--window", "none", "--sinks", "0", "--few-shot", "2", "--limit", "2")
    records = read_records(tmp / "out" / "tiny-windowNone-sinks0" / "synthetic.jsonl")
    assert records[0]["settings"]["window"] is None and records[0]["prompt"].count("<|im_start|>user") == 3
    with pytest.raises(UserError, match="--window must be a positive integer or none, got 'abc'"):
        run_cli(tmp, "--window", "abc")
    with pytest.raises(UserError, match="--sinks must be an integer >= 0, got '-1'"):
        run_cli(tmp, "--sinks", "-1")
    with pytest.raises(UserError, match="not found"):
        run_cli(tmp, "--tasks", "gsm8k", "--data-dir", str(tmp / "nowhere"))


def test_evaluate_task_sampling_in_process(setup, tmp_path):
    _, model, tok, test = setup
    model.train()
    m = common.evaluate_task(model, tok, test[:2], max_new_tokens=8, batch_size=4, samples=4, temperature=1.0,
                               out_path=str(tmp_path / "r.jsonl"), progress=False)
    assert model.training  # training mode is restored for the caller (sft.py / rl.py)
    assert m["n_problems"] == 2 and 0.0 <= m["accuracy"] <= 1.0
    assert {"pass@1", "pass@2", "pass@4", "maj@4"} <= set(m)
    assert m["generated_tokens"] > 0
    records = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert all(len(r["completions"]) == 4 for r in records)


def test_correct_completion_scores_one(setup, monkeypatch):
    """Scoring path: a model that 'answers' with the reference gets accuracy 1."""
    _, model, tok, test = setup

    def fake_generate(model, prompts, max_new_tokens, **kw):
        return [tok.encode(f"#### {test[0]['answer']}") + [tok.eot_id] for _ in prompts], None

    monkeypatch.setattr(common, "generate", fake_generate)
    m = common.evaluate_task(model, tok, test[:1], progress=False)
    assert m["accuracy"] == 1.0 and m["truncated"] == 0.0 and m["parsed"] == 1.0


@pytest.mark.parametrize("n,c,k", [(5, 0, 1), (5, 5, 3), (5, 1, 1), (5, 2, 2), (10, 3, 4), (4, 1, 4)])
def test_pass_at_k(n, c, k):
    # by hand: probability that k draws without replacement include at least one correct sample
    p_all_wrong = math.prod((n - c - i) / (n - i) for i in range(k))
    assert common.pass_at_k(n, c, k) == pytest.approx(1 - p_all_wrong)


def test_pass_at_k_values():
    assert common.pass_at_k(5, 1, 1) == pytest.approx(0.2)
    assert common.pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # C(3,2)/C(5,2)
    assert common.pass_at_k(4, 1, 4) == 1.0
    assert common.pass_at_k(5, 0, 3) == 0.0


def test_partial_last_line_is_dropped(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"id": "a", "settings": {}, "correct": [true], "majority_correct": true, '
                    '"completion_tokens": [3], "finished": [true]}\n{"id": "b", "sett')
    assert [r["id"] for r in common.read_results(str(path))] == ["a"]
    assert path.read_text().endswith("}\n")


def test_read_jsonl_errors(tmp_path):
    bad = str(tmp_path / "bad.jsonl")
    fields = {"id": (str, int), "question": str, "answer": (str, int, float)}
    with open(bad, "w") as f:
        f.write('{"id": 1, "question": "q", "solution": "s", "answer": "1"}\n{oops\n')
    with pytest.raises(UserError, match=r"bad.jsonl:2: malformed JSON"):
        common.read_jsonl(bad, fields)
    with open(bad, "w") as f:
        f.write('{"id": 1, "question": "q"}\n')
    with pytest.raises(UserError, match=r"bad.jsonl:1: missing field 'answer'"):
        common.read_jsonl(bad, fields)
    with open(bad, "w") as f:
        f.write('{"id": 1, "question": null, "answer": "2"}\n')
    with pytest.raises(UserError, match=r"bad.jsonl:1: field 'question' must be a string, not NoneType"):
        common.read_jsonl(bad, fields)
    with open(bad, "wb") as f:
        f.write(b'{"id": 1, "question": "q", "answer": "2"}\n{"id": "\xff"}\n')
    with pytest.raises(UserError, match=r"bad.jsonl:2: not UTF-8"):
        common.read_jsonl(bad, fields)


def test_trace_task_records_how_completions_use_the_window(setup, monkeypatch, tmp_path):
    """On the trace task every completion's trajectory is recorded: here a 'model' that writes the reference
    solution, a full-style one whose copies reach further back than the toy model's window of 16 tokens."""
    _, model, tok, _ = setup
    from data import trace
    rows = trace.make_split("test", 2, registers=2, steps=(2, 2), filler=(4,))
    by_prompt = {tuple(common.build_prompt(tok, r)): r for r in rows}

    def fake_generate(model, prompts, max_new_tokens, **kw):
        return [tok.encode(by_prompt[tuple(p)]["solution"]) + [tok.eot_id] for p in prompts], None

    monkeypatch.setattr(common, "generate", fake_generate)
    m = common.evaluate_task(model, tok, rows, progress=False, out_path=str(tmp_path / "trace.jsonl"),
                             trajectory=trace.trajectory)
    assert m["accuracy"] == 1.0
    records = read_records(tmp_path / "trace.jsonl")
    for r, row in zip(sorted(records, key=lambda r: r["id"]), sorted(rows, key=lambda r: r["id"])):
        (t,) = r["trajectories"]
        assert t["style"] == "full" and t["steps"] == 2 and t["unfaithful"] == 0
        assert t["max_distance"] == row["max_distance"]["full"] > 15 and t["fits"] is False


def test_score_parse_and_truncation_rates():
    # three completions: one without an answer to check, one cut at the length limit
    records = [{"correct": [False, True], "answers": [None, "3"], "completion_tokens": [8, 4], "finished": [False, True],
                "majority_correct": True},
               {"correct": [True, True], "answers": ["5", "5"], "completion_tokens": [2, 2], "finished": [True, True],
                "majority_correct": True}]
    m = common.score(records, samples=2)
    assert m["parsed"] == pytest.approx(3 / 4) and m["truncated"] == pytest.approx(1 / 4)
    assert m["accuracy"] == pytest.approx((0.5 + 1.0) / 2) and m["mean_completion_tokens"] == pytest.approx(4.0)


def test_instruction_after_is_the_old_layout():
    from data.prepare import instruction_after
    row = {"id": 1, "question": "What is 2 + 3?", "answer": "5"}
    assert common.chat(row)[-1]["content"] == f"{common.INSTRUCTION}\n\nWhat is 2 + 3?"  # the question ends the prompt
    old = instruction_after(row)
    assert common.chat(old)[-1]["content"] == f"What is 2 + 3?\n\n{common.INSTRUCTION}"  # the instruction ends it
    assert old["answer"] == "5" and old["id"] == 1 and row["question"] == "What is 2 + 3?"


def test_cli_train_split_is_kept_apart(setup):
    tmp = setup[0]
    out = tmp / "out-train"
    run_cli(tmp, "--split", "train", "--limit", "2", "--samples", "2", "--temperature", "1", "--out-dir", str(out))
    train_ids = [r["id"] for r in read_records(out / "tiny" / "synthetic-train.jsonl")]
    assert len(train_ids) == 2 and all("train" in i for i in train_ids)
    assert not (out / "tiny" / "synthetic.jsonl").exists()
    assert set(json.loads((out / "summary.json").read_text())["tiny"]["tasks"]) == {"synthetic-train"}
    with pytest.raises(UserError, match="not with --split train"):
        run_cli(tmp, "--split", "train", "--few-shot", "1", "--out-dir", str(out))
