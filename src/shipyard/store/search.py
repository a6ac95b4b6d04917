"""What free-text search sees of a span: the string values of its JSON input and output.

Every backend indexes the same words: runs of letters and digits (Unicode L and N), matched
whole and case-insensitively, lower-cased by Python. SQLite's FTS5 gets ``fts_text`` (the
words separated by spaces, for its ``ascii`` tokenizer); PostgreSQL and ClickHouse get the
words from ``search_words``/``search_lexemes``.

A contentless FTS5 index forgets a row only when told the exact words it indexed: purge
recomputes them with these functions, so what they return for a given payload must not change
without rebuilding the SQLite index (delete the ``<database>-search`` file: it is rebuilt).
"""

from __future__ import annotations

from typing import Any

import orjson

SEARCH_TEXT_MAX = 200_000  # characters of a span's text that are searchable
MAX_LEXEME = 500  # PostgreSQL refuses lexemes over 2046 bytes; a "word" that long is noise

# bytes.translate table for ASCII text already lower-cased: letters and digits stay, the
# rest becomes a space (non-ASCII bytes never reach it)
_ASCII_WORDS = bytes(c if chr(c).isalnum() else 32 for c in range(128)) + b" " * 128


def _strings(value: Any, out: list[str]) -> None:
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, dict):
        for v in value.values():
            _strings(v, out)
    elif isinstance(value, list):
        for v in value:
            _strings(v, out)


def _payload_text(payload: str | None, raw_invalid: bool) -> str:
    if payload is None:
        return ""
    out: list[str] = []
    try:
        _strings(orjson.loads(payload), out)
    except orjson.JSONDecodeError:
        return payload if raw_invalid else ""
    return " ".join(out)


def search_text(input_json: str | None, output_json: str | None, *, raw_invalid: bool = False) -> str:
    """The searchable text of a span: the string values of its input, a space, those of its
    output, trimmed of spaces, cut at SEARCH_TEXT_MAX characters (NUL characters read as
    spaces). Text that is not JSON counts as nothing (``raw_invalid``: as itself)."""
    text = (_payload_text(input_json, raw_invalid) + " " + _payload_text(output_json, raw_invalid)).strip(" ")
    text = text[:SEARCH_TEXT_MAX]
    return text.replace("\x00", " ") if "\x00" in text else text


class _WordChars(dict):
    """str.translate table: letters and digits (Unicode L and N, as SQLite's tokenizer is
    configured) stay, everything else becomes a space. Filled lazily, one entry per
    character seen."""

    def __missing__(self, code: int) -> str:
        ch = chr(code)
        out = ch if ch.isalnum() else " "
        self[code] = out
        return out


_WORD_CHARS = _WordChars()


def fts_text(text: str) -> str:
    """The words of ``text``, lower-cased, everything between them a space."""
    text = text.lower()
    if text.isascii():  # the common case, entirely in C
        return text.encode().translate(_ASCII_WORDS).decode()
    return text.translate(_WORD_CHARS)


def _lexemes(text: str) -> set[bytes]:
    text = text.lower()
    if text.isascii():  # the common case, entirely in C
        words = set(text.encode().translate(_ASCII_WORDS).split())
    else:
        words = {w.encode() for w in text.translate(_WORD_CHARS).split()}
    if words and max(map(len, words)) > MAX_LEXEME:
        words = {w for w in words if len(w.decode()) <= MAX_LEXEME}
    return words


def search_lexemes(input_json: str | None, output_json: str | None) -> set[bytes]:
    """The distinct searchable words of a span, lower-cased, UTF-8 encoded."""
    return _lexemes(search_text(input_json, output_json, raw_invalid=True))


def search_words(*payloads: str | None) -> set[str]:
    """The searchable words of JSON payloads, lower-cased (as ``search_lexemes``)."""
    text = " ".join(_payload_text(p, True) for p in payloads)[:SEARCH_TEXT_MAX]
    return {w.decode() for w in _lexemes(text)}
