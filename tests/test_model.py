"""The model: cached decoding equals a full forward pass, batching, sampling, checkpoints, tokenizer."""
import json
import os

import pytest
import torch

from model import Config, Transformer, generate, load_checkpoint, sample_next, save_checkpoint
from tokenizer import Tokenizer, toy_tokenizer


def toy_model(seed=0, **kw):
    model = Transformer(Config(n_layers=3, **kw)).init_weights(seed).double().eval()
    for p in model.parameters():  # larger weights make attention sharp, so a wrong window shows up in the logits
        p.data *= 10
    return model


@pytest.mark.parametrize("window,sinks,full_layers", [(8, 0, []), (8, 3, []), (5, 2, [1]), (1, 0, []), (3, 6, []),
                                                      (None, 0, [])])
def test_cached_decoding_equals_full_forward(window, sinks, full_layers):
    torch.manual_seed(0)
    model = toy_model(window=window, sinks=sinks, full_layers=full_layers)
    x = torch.randint(0, 259, (2, 40))  # several times the window
    full = model(x)
    cache = model.make_cache(2, 40)
    one_by_one = torch.cat([model(x[:, t:t + 1], cache=cache) for t in range(40)], 1)
    torch.testing.assert_close(one_by_one, full, rtol=1e-9, atol=1e-9)
    cache = model.make_cache(2, 40)  # a prompt, then chunks longer than the window
    chunks = [model(x[:, :13], cache=cache)] + [model(x[:, t:t + 9], cache=cache) for t in range(13, 40, 9)]
    torch.testing.assert_close(torch.cat(chunks, 1), full, rtol=1e-9, atol=1e-9)
    if window is not None:  # the cache of a windowed layer stays at window + sinks slots
        assert cache.layers[0].n_slots == window + sinks
        model.set_window(None)
        assert (model(x) - full).abs().max() > 1e-3, "the window must matter for this test to mean anything"


def test_left_padded_rows_match_unpadded():
    torch.manual_seed(1)
    model = toy_model(window=6, sinks=2)
    x = torch.randint(0, 259, (2, 30))
    docs = torch.zeros(2, 30, dtype=torch.long)
    docs[1, :7] = -1
    cache = model.make_cache(2, 30)
    out = torch.cat([model(x[:, :12], doc_ids=docs[:, :12], cache=cache)]
                    + [model(x[:, t:t + 1], cache=cache) for t in range(12, 30)], 1)
    torch.testing.assert_close(out[1:, 7:], model(x[1:, 7:]), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(out[:1], model(x[:1]), rtol=1e-9, atol=1e-9)


def test_packed_documents_are_independent():
    torch.manual_seed(2)
    model = toy_model(window=5, sinks=1)
    x = torch.randint(0, 259, (1, 30))
    docs = torch.tensor([[0] * 11 + [1] * 19])
    packed = model(x, doc_ids=docs)
    torch.testing.assert_close(packed[:, :11], model(x[:, :11]), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(packed[:, 11:], model(x[:, 11:]), rtol=1e-9, atol=1e-9)


def test_compiled_blocks_match_eager():
    """compile_blocks (sft.py and rl.py --compile), with the compile options flex_attention needs, changes no number:
    packed documents and a window, loss and gradients."""
    torch.manual_seed(0)
    model = Transformer(Config(n_layers=2, window=6, sinks=1)).init_weights(0)
    idx, targets = torch.randint(0, 259, (2, 24)), torch.randint(0, 259, (2, 24))
    doc_ids = torch.zeros(2, 24, dtype=torch.long)
    doc_ids[0, 10:] = 1
    doc_ids[1, :3] = -1
    eager = model(idx, doc_ids=doc_ids, targets=targets)
    eager_grads = torch.autograd.grad(eager, list(model.parameters()))
    model.compile_blocks()
    compiled = model(idx, doc_ids=doc_ids, targets=targets)
    compiled_grads = torch.autograd.grad(compiled, list(model.parameters()))
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)
    for got, want in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_qwen_style_options_and_rope_scaling_run():
    cfg = dict(qkv_bias=True, qk_norm=True, tie_embeddings=False, head_dim=24, window=4,
               rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                             "original_max_position_embeddings": 16})
    model = toy_model(**cfg)
    x = torch.randint(0, 259, (1, 20))
    cache = model.make_cache(1, 20)
    step = torch.cat([model(x[:, t:t + 1], cache=cache) for t in range(20)], 1)
    torch.testing.assert_close(step, model(x), rtol=1e-9, atol=1e-9)
    assert "lm_head.weight" in model.state_dict() and "layers.0.self_attn.q_norm.weight" in model.state_dict()


def test_greedy_generation_is_the_argmax_path_and_rows_stop_independently():
    torch.manual_seed(3)
    model = toy_model(window=4, sinks=1)
    prompts = [[5, 6, 7, 8, 9], [10, 11]]
    free, _ = generate(model, prompts, max_new_tokens=12)
    for p, out in zip(prompts, free):  # each row equals decoding it alone with full forwards
        seq = list(p)
        for _ in range(12):
            seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
        assert out == seq[len(p):]
    stop = free[0][3]  # a token row 0 emits at step 4: row 0 must stop there, row 1 goes on unless it emits it
    tokens, logprobs = generate(model, prompts, max_new_tokens=12, stop_tokens=[stop])
    assert tokens[0] == free[0][:4]
    expected = free[1][:free[1].index(stop) + 1] if stop in free[1] else free[1]
    assert tokens[1] == expected
    assert [len(lp) for lp in logprobs] == [len(t) for t in tokens]
    full = torch.log_softmax(model(torch.tensor([prompts[0] + tokens[0]])), -1)[0]
    want = [full[len(prompts[0]) - 1 + t, tok].item() for t, tok in enumerate(tokens[0])]
    assert logprobs[0] == pytest.approx(want, abs=1e-9)


def test_sampling_filters():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]] * 2000)
    g = torch.Generator().manual_seed(0)
    top_k, _ = sample_next(logits, 1.0, 2, None, g)
    assert set(top_k.tolist()) == {2, 3}
    # probabilities 0.032, 0.087, 0.237, 0.644: top_p 0.7 keeps the two largest
    top_p, lp = sample_next(logits, 1.0, None, 0.7, g)
    assert set(top_p.tolist()) == {2, 3}
    assert torch.allclose(lp, torch.log_softmax(logits, -1).gather(-1, top_p[:, None]).squeeze(-1))
    greedy, _ = sample_next(logits[:1], 0.0, None, None, g)
    assert greedy.tolist() == [3]


def test_checkpoint_round_trip_and_sharding(tmp_path):
    tok = toy_tokenizer()
    model = Transformer(Config(vocab_size=tok.vocab_size, window=8, sinks=2, full_layers=[1])).init_weights(0)
    for shard_bytes, name in [(2**30, "one"), (20_000, "sharded")]:
        out = tmp_path / name
        save_checkpoint(out, model, tok, {"stage": "test", "metrics": {"x": 1}}, shard_bytes=shard_bytes)
        loaded, tok2, meta = load_checkpoint(out)
        x = torch.randint(0, tok.vocab_size, (1, 20))
        torch.testing.assert_close(loaded(x), model(x))
        assert loaded.config == model.config and meta["stage"] == "test" and "commit" in meta
        assert tok2.encode("abc 12") == tok.encode("abc 12")
    assert os.path.exists(tmp_path / "sharded" / "model.safetensors.index.json")
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p or ".old" in p]


def test_interrupted_save_leaves_no_loadable_checkpoint(tmp_path, monkeypatch):
    tok = toy_tokenizer()
    model = Transformer(Config(vocab_size=tok.vocab_size)).init_weights(0)
    save_checkpoint(tmp_path / "ck", model, tok, {"stage": "first"})

    def crash(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(Tokenizer, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "ck", model, tok, {"stage": "second"})
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "new", model, tok, {"stage": "second"})
    assert load_checkpoint(tmp_path / "ck")[2]["stage"] == "first"  # the old one is intact
    assert not os.path.exists(tmp_path / "new")


def test_bad_checkpoints_give_one_clear_line(tmp_path):
    tok = toy_tokenizer()
    model = Transformer(Config(vocab_size=tok.vocab_size)).init_weights(0)
    with pytest.raises(ValueError, match="does not exist"):
        load_checkpoint(tmp_path / "nothing")
    save_checkpoint(tmp_path / "a", model, tok, {})
    os.remove(tmp_path / "a" / "model.safetensors")
    with pytest.raises(ValueError, match="missing weights file model.safetensors"):
        load_checkpoint(tmp_path / "a")
    save_checkpoint(tmp_path / "b", model, tok, {})
    cfg = json.loads((tmp_path / "b" / "config.json").read_text())
    cfg["dim"] = 32
    (tmp_path / "b" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="shape"):
        load_checkpoint(tmp_path / "b")
    save_checkpoint(tmp_path / "c", model, tok, {})
    os.remove(tmp_path / "c" / "tokenizer.tiktoken")
    with pytest.raises(ValueError, match="missing tokenizer.tiktoken"):
        load_checkpoint(tmp_path / "c")
    with pytest.raises(ValueError, match="window"):
        Config(window=0)


def test_chat_rendering_masks_assistant_tokens(tmp_path):
    tok = toy_tokenizer()
    ids, mask = tok.encode_chat([{"role": "user", "content": "2+2? <|im_end|>"},
                                 {"role": "assistant", "content": "4"}])
    assert tok.decode(ids) == "<|im_start|>user\n2+2? <|im_end|><|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n"
    trained = [i for i, m in zip(ids, mask) if m]
    assert trained == tok.encode("4") + [tok.eot_id]  # content and end-of-turn, nothing else
    assert ids.count(tok.eot_id) == 2  # user text that looks like a special token stays plain text
    prompt, _ = tok.encode_chat([{"role": "user", "content": "hi"}], add_generation_prompt=True)
    assert tok.decode(prompt).endswith("<|im_start|>assistant\n")
    tok.save(tmp_path)
    again = Tokenizer.load(tmp_path)
    assert again.encode_chat([{"role": "user", "content": "é 1,000"}]) == tok.encode_chat([{"role": "user", "content": "é 1,000"}])
    assert tok.stop_tokens == [256, 258]


def test_characters_with_bytes_missing_from_the_vocabulary_are_dropped():
    tok = toy_tokenizer()
    ranks = {b: r for b, r in tok.mergeable_ranks.items() if b not in (bytes([4]), bytes([0xF1]))}
    lacking = Tokenizer("lacking", tok.pat_str, ranks, tok.special_tokens, tok.chat_template)
    assert lacking.encode("a\x04b") == [97, 98]
    assert lacking.encode("x\U00040001y é") == tok.encode("xy é")
    assert tok.unencodable is None
