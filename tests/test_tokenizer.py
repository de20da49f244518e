"""
Tests for tokenizer.py's handling of vocabularies that lack single bytes: for every byte that can start a UTF-8
character, a vocabulary without it drops exactly the characters that start with it and encodes everything else.

    python -m pytest -q tests/test_tokenizer.py
"""
import pytest

from tokenizer import Tokenizer, lead_byte_range, toy_tokenizer, unencodable_pattern

LEAD_BYTES = [b for b in range(256) if lead_byte_range(b) is not None]
TEXT = "Natalia sold 48 clips in April, and half as many in May. #### 72\n\t{x}"


def first_and_last_characters():
    """The first and last character of every lead byte's range: neighbours of a dropped range must survive."""
    return [chr(c) for b in LEAD_BYTES for c in lead_byte_range(b)]


def lacking(*missing):
    tok = toy_tokenizer()
    ranks = {token: rank for token, rank in tok.mergeable_ranks.items() if token[0] not in missing}
    return Tokenizer("lacking", tok.pat_str, ranks, tok.special_tokens, tok.chat_template)


def test_lead_byte_ranges_are_exactly_the_characters_each_byte_starts():
    starts = {}
    for c in range(0x110000):
        if not 0xD800 <= c <= 0xDFFF:
            starts.setdefault(chr(c).encode()[0], []).append(c)
    assert sorted(starts) == LEAD_BYTES == list(range(0x80)) + list(range(0xC2, 0xF5))
    for b, points in starts.items():
        assert lead_byte_range(b) == (points[0], points[-1]) and len(points) == points[-1] - points[0] + 1


@pytest.mark.parametrize("missing", LEAD_BYTES, ids=[f"{b:02x}" for b in LEAD_BYTES])
def test_vocabulary_lacking_one_lead_byte(missing):
    tok = lacking(missing)
    assert tok.unencodable is not None  # compiled, and not empty
    text = TEXT + "".join(first_and_last_characters()) + TEXT
    kept = "".join(ch for ch in text if ch.encode()[0] != missing)
    assert len(kept) < len(text)
    assert tok.decode(tok.encode(text)) == kept
    assert tok.encode(text) == toy_tokenizer().encode(kept)


def test_vocabulary_lacking_many_bytes_still_encodes_ascii():
    tok = lacking(0xE0, 0xED, 0xF0, 0xF4, 0xC2)
    text = "abc \u0800\u0fff\ud7ff\U00010000\U0003ffff\U00100000\U0010ffff\u0080 def \u1000\U00040000"
    assert tok.decode(tok.encode(text)) == "abc  def \u1000\U00040000"


def test_lone_surrogates_need_the_replacement_characters_byte():
    full, without_ef, without_ed = toy_tokenizer(), lacking(0xEF), lacking(0xED)
    assert full.decode(full.encode("a\ud800b")) == "a\ufffdb"  # tiktoken encodes a lone surrogate as U+FFFD
    assert without_ef.encode("a\ud800\udfffb") == full.encode("ab")
    assert without_ed.decode(without_ed.encode("a\ud800b\ud7ff")) == "a\ufffdb"


def test_only_missing_lead_bytes_make_a_pattern():
    assert unencodable_pattern(toy_tokenizer().mergeable_ranks) is None
    assert unencodable_pattern({bytes([b]): b for b in LEAD_BYTES}) is None  # bytes that start no character
