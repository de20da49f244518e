"""
Tests for analysis/recall.py: teacher-forced copy verdicts, checked with a model that knows every next token
and one that never does, and the command end to end on a toy checkpoint.

    python -m pytest -q tests/test_recall.py
"""
import json

import torch

from analysis import recall
from common import build_prompt
from data import trace
from model import Config, Transformer, save_checkpoint
from tokenizer import toy_tokenizer


class Oracle(torch.nn.Module):
    """Logits that put all their mass on the true next token (shift > 0: on a wrong one)."""

    def __init__(self, vocab, shift=0):
        super().__init__()
        self.embed_tokens = torch.nn.Embedding(1, 1)  # where the inputs go (recall.py reads its device)
        self.vocab, self.shift = vocab, shift

    def forward(self, idx, doc_ids=None):
        logits = torch.zeros(*idx.shape, self.vocab)
        logits[:, :-1].scatter_(-1, (idx[:, 1:, None] + self.shift) % self.vocab, 1.0)
        return logits


def test_copy_verdicts_with_perfect_and_wrong_models():
    tok = toy_tokenizer()
    rows = trace.make_split("test", 6, registers=3, steps=(3, 5), filler=(0, 8, 16))
    expected = []
    for row in rows:
        prompt, completion = build_prompt(tok, row), tok.encode(row["solution"])
        expected += [(c["distance"], c["nearest"]) for c in trace.trace_stats(prompt, completion, tok)["copies"]]
    right = recall.copy_verdicts(Oracle(tok.vocab_size), tok, rows, batch_size=4)
    assert sorted((d, n) for d, n, _, _ in right) == sorted(expected) and all(ok for *_, ok in right)
    assert any(n < d for d, n, _, _ in right)  # some values were copied since their write
    assert {kind for _, _, kind, _ in right} == {"operand"}  # full-style references restate nothing
    wrong = recall.copy_verdicts(Oracle(tok.vocab_size, shift=1), tok, rows, batch_size=4)
    assert len(wrong) == len(right) and not any(ok for *_, ok in wrong)
    bins = recall.binned([(d, ok) for d, _, _, ok in right], 16)
    assert sum(b["copies"] for b in bins) == len(expected) and all(b["hi"] - b["lo"] == 15 for b in bins)


def test_cli_writes_and_merges(tmp_path):
    tok = toy_tokenizer()
    model = Transformer(Config(vocab_size=tok.vocab_size, dim=32, n_layers=1, n_heads=2, n_kv_heads=1,
                               hidden_dim=64, window=16, sinks=2)).init_weights(0)
    save_checkpoint(tmp_path / "swa16-sft", model, tok, {"stage": "sft"})
    rows = trace.make_split("test", 3, registers=2, steps=(2, 3), filler=(4,), window_style_fraction=1.0)
    data = tmp_path / "sweep.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "recall.json"
    recall.main(["--ckpt", str(tmp_path / "swa16-sft"), "--data", str(data), "--out", str(out), "--device", "cpu"])
    recall.main(["--ckpt", str(tmp_path / "swa16-sft"), "--data", str(data), "--out", str(out), "--device", "cpu",
                 "--window", "none"])
    results = json.loads(out.read_text())
    assert set(results) == {"swa16-sft", "swa16-sft-windowNone-sinks2"}
    assert results["swa16-sft"]["window"] == 16 and results["swa16-sft-windowNone-sinks2"]["window"] is None
    kinds = results["swa16-sft"]["by_kind"]
    assert kinds["restatement"]["copies"] > 0  # window-style references restate
    assert sum(b["copies"] for b in results["swa16-sft"]["bins"]) == sum(k["copies"] for k in kinds.values())
    assert sum(b["copies"] for b in results["swa16-sft"]["bins_nearest"]) == sum(k["copies"] for k in kinds.values())
