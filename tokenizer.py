"""
Tokenization for every stage: a tiktoken `Encoding` plus a chat template.

A tokenizer is saved inside each checkpoint as two files:
    tokenizer.tiktoken       one "base64(token bytes) rank" line per mergeable token (tiktoken's own format)
    tokenizer_config.json    name, pre-tokenizer regex, special tokens, chat template

convert.py builds one from a Hugging Face tokenizer.json or a GGUF vocabulary; tests use `toy_tokenizer()`,
a byte-level encoding built in code.

Chat template: a small dict rather than a Jinja program, because every model family we support renders a
turn as  prefix(role) + content + eot + sep:
    ChatML (SmolLM2, Qwen):  prefix "<|im_start|>{role}\n", eot "<|im_end|>", sep "\n"
    Llama 3:                 prefix "<|start_header_id|>{role}<|end_header_id|>\n\n", eot "<|eot_id|>", sep ""
plus "bos" (text before the first turn) and "default_system" (inserted when there is no system message).

Usage:
    tok = Tokenizer.load("ckpt/swa512")
    ids, mask = tok.encode_chat([{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}])
"""
import base64
import json
import os
import re

import tiktoken

CHATML = {"bos": "", "prefix": "<|im_start|>{role}\n", "eot": "<|im_end|>", "sep": "\n", "default_system": None}

# GPT-2 style pre-tokenizer, digits split one by one (as SmolLM2 does) so numbers tokenize uniformly.
TOY_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


class Tokenizer:
    def __init__(self, name, pat_str, mergeable_ranks, special_tokens, chat_template):
        self.name = name
        self.pat_str = pat_str
        self.mergeable_ranks = mergeable_ranks
        self.special_tokens = dict(special_tokens)
        self.chat_template = {**CHATML, **chat_template}
        self.encoding = tiktoken.Encoding(name=name, pat_str=pat_str, mergeable_ranks=mergeable_ranks,
                                          special_tokens=self.special_tokens)
        eot = self.chat_template["eot"]
        if eot not in self.special_tokens:
            raise ValueError(f"chat template's end-of-turn token {eot!r} is not a special token")
        self.eot_id = self.special_tokens[eot]
        self.unencodable = unencodable_pattern(mergeable_ranks)
        # Generation stops at the end of the assistant's turn, or at a plain end-of-text token.
        self.stop_tokens = sorted({self.eot_id} | {i for s, i in self.special_tokens.items()
                                                   if s in ("<|endoftext|>", "<|end_of_text|>", "</s>")})

    @property
    def vocab_size(self):
        return self.encoding.n_vocab

    def encode(self, text):
        # Text that merely looks like a special token (a user typing "<|im_end|>") stays plain text.
        if self.unencodable is None or not self.unencodable.search(text):
            return self.encoding.encode(text, allowed_special=set(), disallowed_special=())
        # Characters with a byte the vocabulary lacks are dropped, as the source tokenizers do.
        return [i for part in self.unencodable.split(text) for i in self.encode(part)]

    def decode(self, ids):
        return self.encoding.decode(ids)

    def encode_special(self, text):
        return self.encoding.encode(text, allowed_special="all")

    def encode_chat(self, messages, add_generation_prompt=False):
        """Render a conversation. Returns (ids, assistant_mask): the mask is True on the assistant's content
        and its end-of-turn token, the tokens a fine-tuned model must learn to produce."""
        t = self.chat_template
        if t["default_system"] is not None and (not messages or messages[0]["role"] != "system"):
            messages = [{"role": "system", "content": t["default_system"]}] + list(messages)
        ids, mask = self.encode_special(t["bos"]), []
        mask += [False] * len(ids)

        def add(piece_ids, trained):
            ids.extend(piece_ids)
            mask.extend([trained] * len(piece_ids))

        for m in messages:
            trained = m["role"] == "assistant"
            add(self.encode_special(t["prefix"].format(role=m["role"])), False)
            add(self.encode(m["content"]), trained)
            add([self.eot_id], trained)
            add(self.encode_special(t["sep"]), False)
        if add_generation_prompt:
            add(self.encode_special(t["prefix"].format(role="assistant")), False)
        return ids, mask

    def save(self, directory):
        with open(os.path.join(directory, "tokenizer.tiktoken"), "w") as f:
            for token, rank in sorted(self.mergeable_ranks.items(), key=lambda kv: kv[1]):
                f.write(f"{base64.b64encode(token).decode()} {rank}\n")
        config = {"name": self.name, "pat_str": self.pat_str, "special_tokens": self.special_tokens,
                  "chat_template": self.chat_template}
        with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
            json.dump(config, f, indent=1, ensure_ascii=False)

    @classmethod
    def load(cls, directory):
        """The tokenizer saved in `directory`, checked: a malformed file is a UserError naming it (and the line of
        tokenizer.tiktoken), never a failure inside tiktoken."""
        from common import fail, read_json
        config_path = os.path.join(directory, "tokenizer_config.json")
        config = read_json(config_path)
        for key, kind in (("name", str), ("pat_str", str), ("special_tokens", dict), ("chat_template", dict)):
            if not isinstance(config.get(key), kind):
                fail(f"{config_path}: {key!r} must be {'a string' if kind is str else 'an object'}")
        special = config["special_tokens"]
        if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in special.values()):
            fail(f"{config_path}: special token ids must be integers >= 0")
        template = {**CHATML, **config["chat_template"]}
        if not all(isinstance(template[k], str) for k in ("bos", "prefix", "eot", "sep")) or not isinstance(
                template["default_system"], (str, type(None))):
            fail(f"{config_path}: chat_template's bos, prefix, eot and sep must be strings, default_system a string "
                 "or null")
        try:
            template["prefix"].format(role="user")
        except (KeyError, IndexError, ValueError):
            fail(f"{config_path}: chat_template's prefix may hold no placeholder but {{role}}: {template['prefix']!r}")
        path = os.path.join(directory, "tokenizer.tiktoken")
        ranks, taken = {}, {}
        with open(path, "rb") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                parts = line.split()
                try:
                    token, rank = base64.b64decode(parts[0], validate=True), int(parts[1])
                    if len(parts) != 2 or rank < 0:
                        raise ValueError
                except (ValueError, IndexError):  # binascii.Error is a ValueError
                    fail(f"{path}:{lineno}: expected \"<base64 token> <rank>\"")
                if token in ranks or rank in taken:
                    fail(f"{path}:{lineno}: token or rank {rank} occurs twice")
                ranks[token], taken[rank] = rank, token
        clash = sorted(i for i in special.values() if i in taken)
        if clash or len(set(special.values())) < len(special):
            fail(f"{config_path}: special token ids must differ from each other and from the ranks of "
                 f"tokenizer.tiktoken{f' (both use {clash[0]})' if clash else ''}")
        try:
            return cls(config["name"], config["pat_str"], ranks, special, config["chat_template"])
        except ValueError as e:  # an invalid pat_str regex, or an end-of-turn token that is not special
            fail(f"{config_path}: {e}")


def lead_byte_range(b):
    """(first, last) code point of the characters whose UTF-8 encoding starts with byte b, or None when b
    never starts one (continuation bytes 0x80-0xBF, 0xC0, 0xC1 and 0xF5-0xFF). Lead bytes whose shortest
    form would be overlong (E0, F0), a surrogate (ED) or past U+10FFFF (F4) cover less than their bit pattern."""
    if b < 0x80:
        return b, b
    if 0xC2 <= b <= 0xDF:
        first = (b - 0xC0) << 6
        return first, first + 0x3F
    if 0xE0 <= b <= 0xEF:
        first = (b - 0xE0) << 12
        return max(first, 0x800), (0xD7FF if b == 0xED else first + 0xFFF)
    if 0xF0 <= b <= 0xF4:
        first = (b - 0xF0) << 18
        return max(first, 0x10000), min(first + 0x3FFFF, 0x10FFFF)
    return None


def unencodable_pattern(mergeable_ranks):
    """Regex of the characters whose UTF-8 encoding needs a single byte the vocabulary has no token for
    (SmolLM2 lacks a few), or None. tiktoken cannot encode those; UTF-8 continuation bytes are assumed present.
    A lone surrogate counts as U+FFFD (lead byte EF): tiktoken encodes it as that replacement character.
    The pattern is a character class of code point ranges, so search and split take time linear in the text."""
    ranges = []
    for b in range(256):
        span = lead_byte_range(b)
        if span is None or bytes([b]) in mergeable_ranks:
            continue
        ranges.append(span)
        if b == 0xEF:
            ranges.append((0xD800, 0xDFFF))
    if not ranges:
        return None
    return re.compile("[" + "".join(f"\\U{lo:08x}-\\U{hi:08x}" for lo, hi in ranges) + "]")


def toy_tokenizer():
    """Byte-level tokenizer for tests and the tiny preset: one token per byte, then three special tokens."""
    ranks = {bytes([b]): b for b in range(256)}
    specials = {"<|endoftext|>": 256, "<|im_start|>": 257, "<|im_end|>": 258}
    return Tokenizer("toy-bytes", TOY_PATTERN, ranks, specials, CHATML)
