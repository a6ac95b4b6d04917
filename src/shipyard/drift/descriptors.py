"""Structural descriptors of one text: cheap, deterministic, no model.

Per text: length in characters and tokens, the share of words not in an English
dictionary, JSON validity, casing, language, emptiness and (for outputs) refusals. Tokens
are counted without a tokenizer: runs of letters, runs of digits and single punctuation
marks, a stable approximation of BPE token counts (about 0.8x for English prose).
"""

from __future__ import annotations

import gzip
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson

DATA = Path(__file__).resolve().parent / "data"
MAX_SCAN_CHARS = 20_000  # descriptors other than length look at the first this many characters

_PIECE = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)*|\d+|[^\w\s]", re.UNICODE)
_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)*", re.UNICODE)
_REFUSAL = re.compile(
    r"\b(?:i'?m sorry,? but|i am sorry,? but|sorry,? (?:but )?i (?:can(?:no|')?t|am unable|'m unable)"
    r"|i (?:can(?:no|')?t|am unable to|'m unable to|won'?t|will not|am not able to|'m not able to) "
    r"(?:help|assist|provide|comply|do that|fulfil|support|answer|share|engage)"
    r"|as an ai(?: language model| assistant)?,? i"
    r"|i must (?:decline|refuse)|i(?:'m| am) not (?:allowed|permitted) to"
    r"|(?:that|this) (?:request )?(?:violates|goes against) (?:my|our) (?:guidelines|policies|policy))",
    re.IGNORECASE,
)
_SCRIPTS = (
    ("ja", re.compile(r"[\u3040-\u30ff]")),
    ("ko", re.compile(r"[\uac00-\ud7af]")),
    ("zh", re.compile(r"[\u4e00-\u9fff]")),
    ("ru", re.compile(r"[\u0400-\u04ff]")),
    ("ar", re.compile(r"[\u0600-\u06ff]")),
    ("hi", re.compile(r"[\u0900-\u097f]")),
    ("el", re.compile(r"[\u0370-\u03ff]")),
    ("he", re.compile(r"[\u0590-\u05ff]")),
    ("th", re.compile(r"[\u0e00-\u0e7f]")),
)
_STOPWORDS: dict[str, str] = {
    "en": "the and of to is in that it for you with on this are was be have not what how can your "
          "please my i me do does would should could there their they which will from about an",
    "es": "el la los las de que y en un una es por con para no se su al lo como más pero sus le ya "
          "porque está muy también fue hay qué cómo",
    "fr": "le la les de des et est un une que qui en dans pour pas sur au avec ce il elle je vous nous "
          "ne ses mais ou sont être très cette comment",
    "de": "der die das und ist nicht ein eine zu den von mit sich des auf für im dem ich sie es wie "
          "auch wir ihr sind oder aber wird kann bitte",
    "it": "il di che la è e per un una non in sono mi con si ho lo come ma gli le della del questo "
          "anche perché molto cosa",
    "pt": "o a os as de que e do da em um uma para com não se na no por mais como mas foi ao ele das "
          "dos seu sua você está também",
    "nl": "de het een en van is dat niet op te zijn met voor ik je die aan er maar om ook als dan "
          "bij wat hoe",
}
_LANG_OF: dict[str, tuple[str, ...]] = {}
for _lang, _words in _STOPWORDS.items():
    for _w in _words.split():
        _LANG_OF[_w] = _LANG_OF.get(_w, ()) + (_lang,)
STOPWORDS = frozenset(_LANG_OF)
_SUPPLEMENT = ("i'm i've i'll i'd you're you've you'll you'd we're we've we'll they're they've "
               "he's she's that's there's what's let's isn't aren't wasn't weren't doesn't didn't "
               "hasn't haven't hadn't won't wouldn't shouldn't couldn't ok okay online email app apps "
               "website internet login password username smartphone wifi")


@lru_cache(maxsize=1)
def dictionary() -> frozenset[str]:
    """English words (SCOWL small, see data/WORDLIST-LICENSE.txt), lower-case."""
    with gzip.open(DATA / "words_en.txt.gz", "rt", encoding="utf-8") as fh:
        words = set(fh.read().split())
    words.update(_SUPPLEMENT.split())
    return frozenset(words)


def language(text: str, words: list[str]) -> str:
    """A coarse language guess: the script for non-Latin text, else stop-word votes among
    en, es, fr, de, it, pt, nl; 'und' when nothing decides."""
    sample = text[:2000]
    best, best_n = "und", 0
    for lang, rx in _SCRIPTS:
        n = len(rx.findall(sample))
        if n > best_n:
            best, best_n = lang, n
    latin = sum(1 for w in words[:400] if w.isascii())
    if best_n and best_n >= latin:
        return best
    votes: dict[str, int] = {}
    for w in words[:400]:
        for lang in _LANG_OF.get(w, ()):
            votes[lang] = votes.get(lang, 0) + 1
    if not votes:
        return "und"
    lang, n = max(votes.items(), key=lambda kv: (kv[1], kv[0] == "en"))
    return lang if n >= 2 or len(words) <= 3 else "und"


def casing(text: str) -> str:
    """'none' (no cased letters), 'lower', 'upper' or 'mixed'."""
    lower, upper = text.lower(), text.upper()
    if lower == upper:
        return "none"
    if text == lower:
        return "lower"
    if text == upper:
        return "upper"
    return "mixed"


def parse_json(text: str) -> Any:
    """The JSON object or array ``text`` holds (whitespace around allowed), else None."""
    s = text.strip()
    if not s or s[0] not in "{[":
        return None
    try:
        return orjson.loads(s)
    except orjson.JSONDecodeError:
        return None


def is_refusal(text: str) -> bool:
    return bool(_REFUSAL.search(text[:600]))


def text_descriptors(text: str, *, output: bool = False) -> dict[str, Any]:
    """The descriptors of one input or output text. ``json`` is the parsed value (for the
    schema check; not a descriptor)."""
    head = text[:MAX_SCAN_CHARS]
    pieces = _PIECE.findall(head)
    tokens = len(pieces) if len(text) <= MAX_SCAN_CHARS else round(len(pieces) * len(text) / len(head))
    words = [p.lower() for p in pieces if p[0].isalpha()]
    dict_words = dictionary()
    latin = [w for w in words if w.isascii() and len(w) > 1]
    non_dict = (sum(1 for w in latin if w not in dict_words) / len(latin)) if latin else None
    parsed = parse_json(head) if len(text) <= MAX_SCAN_CHARS else parse_json(text)
    d: dict[str, Any] = {
        "chars": len(text),
        "tokens": tokens,
        "non_dictionary_share": non_dict,
        "json_valid": parsed is not None,
        "casing": casing(head),
        "language": language(head, words),
        "empty": not text.strip(),
        "json": parsed,
    }
    if output:
        d["refusal"] = is_refusal(head)
    return d


# ---- text of inputs and outputs --------------------------------------------------------
def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for p in content:
            if isinstance(p, str):
                parts.append(p)
            elif isinstance(p, dict) and isinstance(p.get("text"), str):
                parts.append(p["text"])
        return "\n".join(parts)
    return ""


def input_text(value: Any) -> str | None:
    """The text that stands for an input: the last user message of a chat request (what
    the user asked this time; system prompts and history are left out); for a dataset
    item with template ``variables``, their values joined; a plain string as is."""
    if isinstance(value, str):
        return value
    if not isinstance(value, dict):
        return None
    if value.get("_truncated") is True and isinstance(value.get("text"), str):
        return None  # a payload cut by the recorder's size cap: not comparable
    messages = value.get("messages")
    if isinstance(messages, list):
        for m in reversed(messages):
            if isinstance(m, dict) and m.get("role") == "user":
                return _content_text(m.get("content"))
        for m in reversed(messages):  # no user turn: the last message of any role
            if isinstance(m, dict):
                return _content_text(m.get("content"))
        return ""
    variables = value.get("variables")
    if isinstance(variables, dict):
        return "\n".join(v if isinstance(v, str) else orjson.dumps(v).decode() for v in variables.values())
    if isinstance(value.get("prompt"), str):
        return value["prompt"]
    if isinstance(value.get("input"), str):
        return value["input"]
    return None


def output_parts(value: Any) -> tuple[str, bool, bool] | None:
    """(text, has tool calls, refused by the API's refusal field) of an output: a chat
    completion (first choice), a message, or a plain string / JSON value (dataset
    ``expected``). None when there is no output."""
    if value is None:
        return None
    if isinstance(value, str):
        return value, False, False
    if isinstance(value, dict):
        if value.get("_truncated") is True:
            return None
        choices = value.get("choices")
        if isinstance(choices, list):
            if not choices or not isinstance(choices[0], dict):
                return "", False, False
            msg = choices[0].get("message") or choices[0].get("delta") or {}
        elif "role" in value and ("content" in value or "tool_calls" in value):
            msg = value
        else:
            return orjson.dumps(value).decode(), False, False
        if not isinstance(msg, dict):
            return "", False, False
        text = _content_text(msg.get("content"))
        tools = bool(msg.get("tool_calls") or msg.get("function_call"))
        refusal = bool(msg.get("refusal"))
        if refusal and not text:
            text = str(msg["refusal"])
        return text, tools, refusal
    return orjson.dumps(value).decode(), False, False


def response_schema(value: Any) -> dict[str, Any] | None:
    """The JSON schema a chat request asked for (``response_format.json_schema.schema``)."""
    if not isinstance(value, dict):
        return None
    fmt = value.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        js = fmt.get("json_schema")
        if isinstance(js, dict) and isinstance(js.get("schema"), dict):
            return js["schema"]
    return None
