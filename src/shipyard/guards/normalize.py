"""Text normalisation against obfuscation, shared by the heuristic guards.

``views(text)`` returns the strings a detector should scan:

1. *plain*: NFKC (full-width and mathematical letters become ASCII), zero-width and other
   invisible format characters removed, lower-cased, whitespace collapsed;
2. *deobfuscated* (only when it differs): Latin look-alikes from Cyrillic and Greek mapped to
   Latin, leetspeak digits inside words mapped to letters, letters spaced or dotted apart
   (``i g n o r e``, ``i.g.n.o.r.e``) joined;
3. *decoded*: the text of base64 / hex blobs that decode to readable UTF-8.

Everything is precompiled at import; a view costs a few microseconds per kilobyte.
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

# invisible characters used to split keywords: zero-width space/joiners, word joiner,
# BOM, soft hyphen, Mongolian vowel separator, bidi controls, tag characters
_INVISIBLE_RE = re.compile("[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180e\u200b-\u200f"
                           "\u202a-\u202e\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\U000e0000-\U000e007f]")
_WS_RE = re.compile(r"[\t\r\f\v\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+| {2,}")
_NL_RE = re.compile(r"\n\s*")

_CONFUSABLES = str.maketrans({
    # Cyrillic
    "а": "a", "в": "b", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p",
    "с": "c", "т": "t", "у": "y", "х": "x", "і": "i", "ї": "i", "ј": "j", "ѕ": "s", "ԁ": "d",
    "ɡ": "g", "ӏ": "l", "ԛ": "q", "ԝ": "w", "ү": "y", "һ": "h",
    # Greek
    "α": "a", "β": "b", "ε": "e", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p", "τ": "t",
    "υ": "u", "χ": "x", "γ": "y", "η": "n", "ω": "w",
    # Latin look-alikes and symbols
    "ı": "i", "ł": "l", "ø": "o", "ß": "ss", "ſ": "s", "ɑ": "a", "ɩ": "i",
})
_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s",
                       "!": "i", "|": "l", "8": "b", "9": "g", "€": "e"})
# a letter next to a leetspeak character: the cheap test before the word-by-word pass
_LEET_HINT_RE = re.compile(r"[a-z][0-9@$!|€]|[0-9@$!|€][a-z]")
_LEET_WORD_RE = re.compile(r"[\w@$!|€]{3,}")
_HAS_LETTER_RE = re.compile(r"[a-z]")
# letters separated by single spaces / dots / dashes / underscores / asterisks: i g n o r e
_SPACED_HINT_RE = re.compile(r"[a-z][ .\-_*][a-z][ .\-_*][a-z][ .\-_*][a-z]")
_SPACED_RE = re.compile(r"(?<![a-z])(?:[a-z][ .\-_*]){3,}[a-z](?![a-z])")
_SPACED_SEP_RE = re.compile(r"[ .\-_*]")
_B64_RE = re.compile(r"[A-Za-z0-9+/]{16,}={0,2}|[A-Za-z0-9_\-]{24,}={0,2}")
_HEX_RE = re.compile(r"\b(?:[0-9a-fA-F]{2}){12,}\b")
_NON_LATIN_RE = re.compile("[\u0370-\u03ff\u0400-\u04ff\u0500-\u052f]")
_LATIN_RE = re.compile("[a-z]")


def strip_invisible(text: str) -> str:
    return _INVISIBLE_RE.sub("", text)


@lru_cache(maxsize=256)  # several guards look at the same message: normalise it once
def plain(text: str) -> str:
    """NFKC, invisible characters removed, lower-case, runs of spaces and of blank lines
    collapsed (line breaks are kept: fake role headers start lines)."""
    if not text.isascii():
        text = unicodedata.normalize("NFKC", _INVISIBLE_RE.sub("", text))
    text = _WS_RE.sub(" ", text)
    if "\n" in text:
        text = _NL_RE.sub("\n", text).replace(" \n", "\n")
    return text.strip().lower()


def _unspace(m: re.Match[str]) -> str:
    return _SPACED_SEP_RE.sub("", m.group(0))


def _fix_confusables(text: str) -> str:
    """Map look-alikes to Latin only inside words that mix scripts (so real Russian or
    Greek text is left alone for the multilingual patterns)."""
    if not _NON_LATIN_RE.search(text):
        return text
    out = []
    for word in text.split(" "):
        if _NON_LATIN_RE.search(word) and (_LATIN_RE.search(word) or len(word) <= 3):
            word = word.translate(_CONFUSABLES)
        out.append(word)
    return " ".join(out)


@lru_cache(maxsize=256)
def deobfuscate(p: str) -> str:
    """Look-alikes and leetspeak undone, on an already ``plain`` string."""
    t = _fix_confusables(p)
    if _LEET_HINT_RE.search(t) is None:
        return t
    return _LEET_WORD_RE.sub(_leet_word, t)


def _leet_word(m: re.Match[str]) -> str:
    w = m.group(0)
    if w.isalpha() or w.isdigit() or not _HAS_LETTER_RE.search(w):
        return w
    return w.translate(_LEET)


def unspace(p: str) -> str | None:
    """Letters spaced or dotted apart joined (``i g n o r e`` -> ``ignore``); None if none."""
    if _SPACED_HINT_RE.search(p) is None:
        return None
    t, n = _SPACED_RE.subn(_unspace, p)
    return t if n else None


def _readable(raw: bytes) -> str | None:
    try:
        s = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not s:
        return None
    printable = sum(ch.isprintable() or ch in "\n\t" for ch in s)
    letters = sum(ch.isalpha() for ch in s)
    if printable / len(s) < 0.95 or letters / len(s) < 0.5 or " " not in s.strip():
        return None
    return s


def decoded_blobs(text: str, limit: int = 8) -> list[str]:
    """Readable text hidden in base64 (standard or URL-safe) or hex blobs."""
    out: list[str] = []
    long_tokens = [t for t in text.split() if len(t) >= 16]
    if not long_tokens:
        return out
    text = " ".join(long_tokens)
    for m in _B64_RE.finditer(text):
        blob = m.group(0)
        if blob.isalpha() and (blob.islower() or blob.isupper()):
            continue  # a long plain word, not base64
        pad = "=" * (-len(blob) % 4)
        for decode in (base64.b64decode, base64.urlsafe_b64decode):
            try:
                s = _readable(decode(blob + pad))
            except (binascii.Error, ValueError):
                s = None
            if s:
                out.append(s)
                break
        if len(out) >= limit:
            return out
    for m in _HEX_RE.finditer(text):
        s = _readable(bytes.fromhex(m.group(0)))
        if s:
            out.append(s)
        if len(out) >= limit:
            break
    return out


@dataclass(slots=True)
class Views:
    plain: str
    deobfuscated: str | None  # when different from plain
    compact: str | None  # spaced-out letters joined: scan with whitespace-tolerant patterns
    decoded: list[str]  # readable base64 / hex payloads, as plain strings


def views(text: str) -> Views:
    p = plain(text)
    d = deobfuscate(p)
    c = unspace(d)
    decoded = [plain(s) for s in decoded_blobs(text)] if len(text) >= 16 else []
    return Views(p, d if d != p else None, c, decoded)
