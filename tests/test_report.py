"""
Tests for report.py on fabricated run outputs (summary.json, metrics.jsonl, config.json) in a temporary
directory: the table's rows and cells, and the gap-recovered arithmetic including the undefined case.

    python -m pytest -q tests/test_report.py
"""

import json

import pytest

import report


def task(acc, length=20.0):
    return {"n_problems": 10, "accuracy": acc, "mean_completion_tokens": length, "generated_tokens": 200,
            "tokens_per_s": 100.0, "truncated": 0.0}


def fabricate(tmp_path, sa_sft=0.8, swa_sft=0.3, swa_rl=0.55):
    run = tmp_path / "run"
    summary = {
        "pretrained-windowNone-sinks0": {"tasks": {"synthetic": task(0.5)}, "tokens_per_s": 1000.0,
                                         "peak_memory_gb": 0.5, "stage": "sft"},
        "pretrained-window32-sinks0": {"tasks": {"synthetic": task(0.1)}, "tokens_per_s": 1200.0,
                                       "peak_memory_gb": 0.4, "stage": "sft"},
        "sa-sft": {"tasks": {"synthetic": task(sa_sft, 30.0)}, "tokens_per_s": 900.0, "peak_memory_gb": 0.6},
        "sa-rl": {"tasks": {"synthetic": task(0.9)}, "tokens_per_s": 950.0, "peak_memory_gb": 0.6},
        "swa-sft": {"tasks": {"synthetic": task(swa_sft)}, "tokens_per_s": 1500.0, "peak_memory_gb": 0.3},
        "swa-rl": {"tasks": {"synthetic": task(swa_rl)}, "tokens_per_s": 1600.0, "peak_memory_gb": 0.3},
    }
    (run / "eval").mkdir(parents=True)
    (run / "eval" / "summary.json").write_text(json.dumps(summary))
    for arm, window in (("sa", None), ("swa", 32)):
        for stage in ("sft", "rl"):
            (run / f"{arm}-{stage}").mkdir()
            (run / f"{arm}-{stage}" / "config.json").write_text(json.dumps({"window": window}))
        lines = [json.dumps({"step": s, "reward": 0.1 * s, "accuracy": 0.1 * s}) for s in (1, 2, 3)]
        (run / f"{arm}-rl" / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return run


def test_table_and_gap(tmp_path):
    run = fabricate(tmp_path)
    report.main([str(run)])
    text = (run / "REPORT.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(rows) == 7  # header + SA/SWA x before SFT/SFT/RL
    assert "synthetic accuracy (%)" in rows[0]
    assert rows[1] == "| SA (full) | full | before SFT | pretrained-windowNone-sinks0 | 50.0 | 20.0 | 1000 | 0.50 |"
    assert rows[2] == "| SA (full) | full | SFT | sa-sft | 80.0 | 30.0 | 900 | 0.60 |"
    assert rows[4] == "| SWA | 32 | before SFT | pretrained-window32-sinks0 | 10.0 | 20.0 | 1200 | 0.40 |"
    assert rows[6] == "| SWA | 32 | SFT + RL | swa-rl | 55.0 | 20.0 | 1600 | 0.30 |"
    assert "- synthetic: 0.500 (SA-SFT 0.8000, SWA-SFT 0.3000, SWA-RL 0.5500)" in text  # (0.55-0.3)/(0.8-0.3)
    assert "3 steps, reward first 0.100, last 0.300" in text
    # the plot, or the note saying why there is none
    assert (run / "rl_reward.png").exists() or "matplotlib is not installed" in text


def test_gap_undefined(tmp_path):
    run = fabricate(tmp_path, sa_sft=0.4, swa_sft=0.4, swa_rl=0.5)
    report.main([str(run)])
    assert "- synthetic: undefined (SA-SFT 0.4000" in (run / "REPORT.md").read_text()


@pytest.mark.parametrize("args, expected", [((0.8, 0.3, 0.55), 0.5), ((0.8, 0.3, 0.3), 0.0),
                                            ((0.8, 0.3, 0.8), 1.0), ((0.5, 0.5, 0.6), None),
                                            ((0.5, None, 0.6), None)])
def test_gap_recovered(args, expected):
    got = report.gap_recovered(*args)
    assert got == pytest.approx(expected) if expected is not None else got is None


def test_gap_swa_ahead_is_flagged(tmp_path):
    run = fabricate(tmp_path, sa_sft=0.2, swa_sft=0.4, swa_rl=0.2)
    report.main([str(run)])
    text = (run / "REPORT.md").read_text()
    assert "- synthetic: 1.000 (SA-SFT 0.2000, SWA-SFT 0.4000, SWA-RL 0.2000; SWA-SFT is not behind" in text
