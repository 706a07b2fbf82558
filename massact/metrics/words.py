"""Word classes of tokens: function word, content word, delimiter, other. Pure over token strings.

Tokens are the tokenizer's own strings (``convert_ids_to_tokens``), in one of four schemes:
``bytelevel`` (GPT-2 / SmolLM2 BPE: "Ġ" marks a leading space, bytes mapped to printable chars),
``sentencepiece`` ("▁" marks a leading space, "<0x0A>" byte pieces), ``wordpiece`` (BERT: "##"
marks a continuation piece) and ``plain`` (the text itself, e.g. a character tokenizer).

Tokens are grouped into words; a word's class goes to its first (word-initial) token and every
continuation piece is ``other``, so "Ġthe" + "ory" is one content word, not the function word
"the". A word is a function word when its stripped lower-cased text is in the list (punctuation
included), a content word when it is alphabetic and not in the list, a delimiter when it is only
whitespace or punctuation and not in the list (newlines, "“", ")."), else other (numbers,
special tokens, mixed pieces).
"""
from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from functools import lru_cache
from importlib.resources import files
from pathlib import Path

FUNCTION_WORDS = Path(str(files("massact.fixtures") / "function_words.txt"))
CLASSES = ("function", "content", "delimiter", "other")
SCHEMES = ("bytelevel", "sentencepiece", "wordpiece", "plain")
_SP_BYTE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def load_function_words(path: Path | str = FUNCTION_WORDS) -> frozenset[str]:
    """The list, lower-cased; lines starting with "# " are group headers, blank lines skipped."""
    words = set()
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.startswith("# ") or not line.strip():
            continue
        words.add(line.strip().lower())
    if not words:
        raise ValueError(f"{path} lists no function words")
    return frozenset(words)


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's printable-char -> byte map (the inverse of its bytes_to_unicode)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def detect_scheme(vocab: Iterable[str]) -> str:
    """The scheme of a tokenizer from its vocabulary strings: the most common marker wins.

    Counting matters: a byte-level vocabulary also holds a few "##" tokens (markdown headers).
    """
    counts = {"wordpiece": 0, "sentencepiece": 0, "bytelevel": 0}
    for tok in vocab:
        if tok.startswith("##") and len(tok) > 2:
            counts["wordpiece"] += 1
        elif tok.startswith("▁"):
            counts["sentencepiece"] += 1
        elif tok.startswith("Ġ"):
            counts["bytelevel"] += 1
    best = max(counts, key=counts.get)
    return best if counts[best] else "plain"


def token_bytes(token: str | None, scheme: str) -> tuple[bytes, bool]:
    """A token's text as UTF-8 bytes, and whether it continues the previous word by its marker."""
    if scheme not in SCHEMES:
        raise ValueError(f"scheme {scheme!r} is not one of {SCHEMES}")
    if not token:
        return b"", False
    if scheme == "bytelevel":
        dec = _byte_decoder()
        if all(c in dec for c in token):
            return bytes(dec[c] for c in token), False
        return token.encode(), False  # an added token outside the byte alphabet
    if scheme == "sentencepiece":
        m = _SP_BYTE.fullmatch(token)
        return (bytes([int(m.group(1), 16)]) if m else token.replace("▁", " ").encode()), False
    if scheme == "wordpiece" and token.startswith("##") and len(token) > 2:
        return token[2:].encode(), True
    return token.encode(), False


def _is_punct_or_space(text: str) -> bool:
    return all(c.isspace() or unicodedata.category(c)[0] in "PS" for c in text)


def word_class(text: str, function_words: frozenset[str]) -> str:
    """The class of one whole word's text."""
    w = text.strip().lower()
    if not text:
        return "other"
    if w in function_words:
        return "function"
    if w.isalpha():
        return "content"
    if _is_punct_or_space(text):  # whitespace-only words (newlines) included
        return "delimiter"
    return "other"


def _starts_word(cur: bytes, word: bytes, continued: bool, scheme: str) -> bool:
    """Whether a token with bytes ``cur`` begins a new word after the word so far, ``word``."""
    if not word:
        return True
    if scheme == "wordpiece":  # BERT splits words at spaces and punctuation before WordPiece
        return not continued
    if not cur or cur[:1].isspace():  # "Ġthe", "▁the", "\n"
        return True
    if 0x80 <= cur[0] < 0xC0:  # a UTF-8 continuation byte: the middle of a character
        return False
    first = cur.decode("utf-8", errors="replace")[:1]
    last = word.decode("utf-8", errors="replace")[-1:]
    # a word never starts mid-word ("Ġna"+"ïve", "Ġthe"+"ory"); punctuation and clitics ("'s") do
    return not (first.isalnum() and last.isalnum())


def classify(tokens: Sequence[str | None], *, scheme: str, function_words: frozenset[str],
             specials: Iterable[str] = ()) -> list[str]:
    """One class per token (see the module docstring); specials are ``other`` words of their own.

    Position 0 always starts a word: a sample may begin mid-word, and the piece stands alone.
    """
    specials = frozenset(specials)
    out = ["other"] * len(tokens)
    head, word = None, b""  # index of the current word's first token, and its bytes so far

    def close() -> None:
        if head is not None:
            out[head] = word_class(word.decode("utf-8", errors="replace"), function_words)

    for i, tok in enumerate(tokens):
        if tok in specials:
            close()
            head, word = None, b""
            continue
        cur, continued = token_bytes(tok, scheme)
        if head is None or _starts_word(cur, word, continued, scheme):
            close()
            head, word = i, cur
        else:
            word += cur
    close()
    return out


def word_text(token: str | None, scheme: str) -> str:
    """A token's readable text (for reports): markers decoded, partial bytes replaced."""
    return token_bytes(token, scheme)[0].decode("utf-8", errors="replace")
