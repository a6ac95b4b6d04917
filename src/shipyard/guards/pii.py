"""PII and secret detection with redact, mask or block.

Structured identifiers only, found by precompiled patterns and then *validated*, so a
16-digit order number is not a payment card and a typo'd IBAN is not an IBAN:

* ``email``; ``phone`` (international ``+CC``, North American, and national formats with a
  leading 0, 8–15 digits, never a date); ``credit_card`` (13–19 digits, issuer prefix and
  Luhn check); ``iban`` (country length table and the ISO 13616 mod-97 check); ``us_ssn``
  (area/group/serial rules; bare 9 digits only next to "SSN"/"social security");
  ``ip_address`` (IPv4 with valid octets, IPv6 via ``ipaddress``); ``secret`` (cloud and
  SaaS API key formats, JWTs, private key blocks, bearer tokens, passwords in URLs and
  ``key = value`` assignments of high-entropy values).

``redact`` replaces a finding with ``[EMAIL]``-style placeholders, ``mask`` keeps a few
characters (``j***@example.com``, ``**** **** **** 4242``), ``block`` refuses. The span
records counts per entity type, never the values.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from .base import Guard, GuardContext, GuardOptions, Verdict
from .prefilter import FastPattern

ENTITIES = ("email", "phone", "credit_card", "iban", "us_ssn", "ip_address", "secret")
# when two findings overlap, the higher priority wins
PRIORITY = {"secret": 0, "credit_card": 1, "iban": 2, "us_ssn": 3, "email": 4, "ip_address": 5, "phone": 6}

_EMAIL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._%+\-]{0,63}@[A-Za-z0-9](?:[A-Za-z0-9\-]{0,62}[A-Za-z0-9])?"
                    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]{0,62}[A-Za-z0-9])?)*\.[A-Za-z]{2,24}\b")
_CARD = re.compile(r"(?<![\d\-])(?:\d[ \-]?){12,18}\d(?![\d\-])")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b")
_SSN = re.compile(r"(?<![\d\-])(\d{3})([- ])(\d{2})\2(\d{4})(?![\d\-])")
_SSN_BARE = re.compile(r"(?i)\b(?:ssn|social security(?: number| no\.?)?|ss#)\D{0,20}(\d{9})\b")
_IPV4 = re.compile(r"(?<![\d.])(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?:\.(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}(?!\d|\.\d)")
_IPV6 = re.compile(r"(?<![0-9A-Fa-f:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![0-9A-Fa-f:])")
_VERSION_BEFORE = re.compile(r"\b(?:v|version|ver\.?|release|build)\s*$", re.I)
_PHONE_INTL = re.compile(r"(?<![\w+])\+\d{1,3}(?:[ .\-]?\(?\d{1,5}\)?){1,6}(?!\d)")
_PHONE_NA = re.compile(r"(?<![\w])(?:1[ .\-])?(?:\(\d{3}\)\s?|\d{3}[ .\-])\d{3}[ .\-]\d{4}(?![\d\-])")
_PHONE_NATIONAL = re.compile(r"(?<![\w.\-/])0\d{1,4}(?:[ .\-/]?\d{2,4}){2,4}(?![\d\-])")
_DATE_LIKE = re.compile(r"^\d{1,4}[./\-]\d{1,2}[./\-]\d{1,4}$")
_SECRET_PATTERNS = (
    r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----[\s\S]{16,8000}?-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----",
    r"\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b",
    r"\bgh[pousr]_[A-Za-z0-9]{36,255}\b",
    r"\bgithub_pat_[A-Za-z0-9_]{22,255}\b",
    r"\bglpat-[A-Za-z0-9\-_]{20,}\b",
    r"\bsk-(?:proj-|svcacct-|admin-|ant-(?:api\d\d-)?)?[A-Za-z0-9_\-]{20,}\b",
    r"\bxox[abposr]-[A-Za-z0-9\-]{10,}\b",
    r"https://hooks\.slack\.com/services/[A-Za-z0-9/_\-]{20,}",
    r"\b[rsp]k_(?:live|test)_[A-Za-z0-9]{16,}\b",
    r"\bAIza[0-9A-Za-z\-_]{35}\b",
    r"\bya29\.[0-9A-Za-z\-_]{20,}\b",
    r"\beyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}",
    r"\bnpm_[A-Za-z0-9]{36}\b",
    r"\bhf_[A-Za-z0-9]{30,}\b",
    r"\bSG\.[A-Za-z0-9_\-]{16,}\.[A-Za-z0-9_\-]{16,}\b",
    r"\bAC[a-f0-9]{32}\b",
)
# (prefiltered pattern, full pattern): the prefilter says whether to look at all
_SECRETS = [(FastPattern(p), re.compile(p)) for p in _SECRET_PATTERNS]
# the value of a secret-looking assignment: api_key = "...", password: ..., Authorization: Bearer ...
_ASSIGN = re.compile(
    r"(?i)\b(?:api[_\-]?key|apikey|secret(?:[_\-]?key)?|client[_\-]?secret|access[_\-]?token|auth[_\-]?token"
    r"|refresh[_\-]?token|token|password|passwd|pwd|passphrase|private[_\-]?key|aws_secret_access_key)\b"
    r"[\"']?\s*(?:[:=]|=>|\bis\b)\s*[\"']?([^\s\"',;<>]{6,200})")
_ASSIGN_KEYS = ("key", "secret", "token", "passw", "pwd", "passphrase")
_BEARER = re.compile(r"(?i)\b(?:bearer|basic)\s+([A-Za-z0-9\-._~+/]{16,}=*)")
_URL_PASSWORD = re.compile(r"\b[a-z][a-z0-9+.\-]{1,20}://[^\s:/@]{1,64}:([^\s@/]{3,128})@")

# IBAN lengths per country (ISO 13616 registry)
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29,
    "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29,
    "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28,
    "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20,
    "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29,
    "RO": 24, "RS": 22, "SA": 24, "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}
PLACEHOLDER = {e: f"[{e.upper()}]" for e in ENTITIES}


@dataclass(slots=True, frozen=True)
class Finding:
    start: int
    end: int
    entity: str


def luhn_ok(digits: str) -> bool:
    total, odd = 0, True
    for ch in reversed(digits):
        d = ord(ch) - 48
        if not odd:
            d *= 2
            if d > 9:
                d -= 9
        total += d
        odd = not odd
    return total % 10 == 0


def card_ok(digits: str) -> bool:
    n = len(digits)
    if not 13 <= n <= 19 or len(set(digits)) < 2 or not luhn_ok(digits):
        return False
    p2, p4 = int(digits[:2]), int(digits[:4])
    return (
        digits[0] == "4"  # Visa
        or 51 <= p2 <= 55 or 2221 <= p4 <= 2720  # Mastercard
        or p2 in (34, 37)  # Amex
        or digits.startswith(("6011", "65", "644", "645", "646", "647", "648", "649", "622"))  # Discover/UnionPay
        or 3528 <= p4 <= 3589  # JCB
        or p2 in (30, 36, 38, 39)  # Diners
        or digits.startswith(("50", "56", "57", "58", "6"))  # Maestro and others
    )


def iban_ok(raw: str) -> bool:
    s = raw.replace(" ", "").upper()
    if IBAN_LENGTHS.get(s[:2]) != len(s):
        return False
    moved = s[4:] + s[:4]
    num = "".join(str(int(ch, 36)) for ch in moved)
    return int(num) % 97 == 1


def _valid_iban_end(candidate: str) -> int | None:
    """Length of the valid IBAN at the start of ``candidate`` (which may have swallowed a
    following short token), or None."""
    for _ in range(3):
        if iban_ok(candidate):
            return len(candidate)
        if " " not in candidate:
            return None
        candidate = candidate.rsplit(" ", 1)[0]
    return None


def ssn_ok(area: str, group: str, serial: str) -> bool:
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def _entropy_ok(value: str) -> bool:
    """A secret-looking value: long enough and not a plain word or a placeholder."""
    if value.startswith(("[", "<", "{", "$", "%")) or value.lower() in ("null", "none", "true", "false", "required",
                                                                      "optional", "redacted", "xxxxxxxx", "********"):
        return False
    classes = sum((any(c.islower() for c in value), any(c.isupper() for c in value),
                   any(c.isdigit() for c in value), any(not c.isalnum() for c in value)))
    return classes >= 2 and len(set(value)) >= 5


class PIIOptions(GuardOptions):
    entities: list[Literal["email", "phone", "credit_card", "iban", "us_ssn", "ip_address", "secret"]] = Field(
        default_factory=lambda: list(ENTITIES))
    mask_char: str = Field("*", min_length=1, max_length=1)
    private_ips: bool = True  # also report private / loopback addresses
    allow: list[str] = Field(default_factory=list)  # exact values never reported (e.g. a support address)

    @field_validator("entities")
    @classmethod
    def _nonempty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("list at least one entity")
        return v


class PII(Guard):
    name: ClassVar[str] = "pii"
    Options: ClassVar[type[GuardOptions]] = PIIOptions
    actions: ClassVar[frozenset[str]] = frozenset({"redact", "mask", "block", "flag", "fallback"})
    output_actions: ClassVar[frozenset[str]] = frozenset({"redact", "mask", "block", "flag", "fallback", "reask"})
    default_action: ClassVar[str] = "redact"
    default_roles: ClassVar[tuple[str, ...]] = ("system", "developer", "user", "assistant", "tool", "function")
    streamable: ClassVar[bool] = True

    def __init__(self, options: GuardOptions, stage: Any) -> None:
        super().__init__(options, stage)
        o: PIIOptions = options  # type: ignore[assignment]
        self.entities = frozenset(o.entities)
        self.mask_char = o.mask_char
        self.private_ips = o.private_ips
        self.allow = frozenset(o.allow)

    # ---- finding ----------------------------------------------------------------------
    def find(self, text: str) -> list[Finding]:
        found: list[Finding] = []
        e = self.entities
        digits = sum(map(str.isdigit, text))
        if "secret" in e:
            self._secrets(text, found)
        if "credit_card" in e and digits >= 13:
            for m in _CARD.finditer(text):
                if card_ok(re.sub(r"\D", "", m.group(0))):
                    found.append(Finding(m.start(), m.end(), "credit_card"))
        shaped: list[tuple[int, int]] = []  # IBAN-shaped but invalid: not a phone either
        if digits >= 2:
            for m in _IBAN.finditer(text):
                end = _valid_iban_end(m.group(0)) if "iban" in e else None
                if end is not None:
                    found.append(Finding(m.start(), m.start() + end, "iban"))
                else:
                    shaped.append((m.start(), m.end()))
        if "us_ssn" in e and digits >= 9:
            for m in _SSN.finditer(text):
                if ssn_ok(m.group(1), m.group(3), m.group(4)):
                    found.append(Finding(m.start(), m.end(), "us_ssn"))
            for m in _SSN_BARE.finditer(text):
                d = m.group(1)
                if ssn_ok(d[:3], d[3:5], d[5:]):
                    found.append(Finding(m.start(1), m.end(1), "us_ssn"))
        if "email" in e and "@" in text:
            found += [Finding(m.start(), m.end(), "email") for m in _EMAIL.finditer(text)]
        if "ip_address" in e and digits >= 2:
            self._ips(text, found)
        if "phone" in e and digits >= 7:
            phones: list[Finding] = []
            self._phones(text, phones)
            found += [f for f in phones if not any(a <= f.start < b for a, b in shaped)]
        if self.allow:
            found = [f for f in found if text[f.start:f.end] not in self.allow]
        return _resolve(found)

    def _secrets(self, text: str, found: list[Finding]) -> None:
        for fp, rx in _SECRETS:
            if fp.search(text) is not None:  # prefiltered; rare, so then find them all
                found += [Finding(m.start(), m.end(), "secret") for m in rx.finditer(text)]
        lower = text.lower()
        for rx, keys in ((_ASSIGN, _ASSIGN_KEYS), (_BEARER, ("bearer", "basic")), (_URL_PASSWORD, ("://",))):
            if not any(k in lower for k in keys):
                continue
            for m in rx.finditer(text):
                if _entropy_ok(m.group(1)):
                    found.append(Finding(m.start(1), m.end(1), "secret"))

    def _ips(self, text: str, found: list[Finding]) -> None:
        if "." in text:
            for m in _IPV4.finditer(text):
                if _VERSION_BEFORE.search(text, max(0, m.start() - 12), m.start()):
                    continue
                if not self.private_ips:
                    ip = ipaddress.ip_address(m.group(0))
                    if ip.is_private or ip.is_loopback:
                        continue
                found.append(Finding(m.start(), m.end(), "ip_address"))
        if "::" in text or text.count(":") >= 7:
            for m in _IPV6.finditer(text):
                s = m.group(0)
                if s.count(":") < 2 or len(s) < 3:
                    continue
                try:
                    ip = ipaddress.IPv6Address(s)
                except ValueError:
                    continue
                if s == "::" or (not self.private_ips and (ip.is_private or ip.is_loopback)):
                    continue
                found.append(Finding(m.start(), m.end(), "ip_address"))

    @staticmethod
    def _phones(text: str, found: list[Finding]) -> None:
        for rx, lo in ((_PHONE_INTL, 8), (_PHONE_NA, 10), (_PHONE_NATIONAL, 9)):
            for m in rx.finditer(text):
                s = m.group(0).rstrip()
                n = sum(c.isdigit() for c in s)
                if not lo <= n <= 15 or _DATE_LIKE.match(s):
                    continue
                found.append(Finding(m.start(), m.start() + len(s), "phone"))

    # ---- rewriting --------------------------------------------------------------------
    def rewrite(self, text: str, findings: list[Finding], action: str) -> str:
        out, last = [], 0
        for f in findings:
            out.append(text[last:f.start])
            value = text[f.start:f.end]
            out.append(mask(value, f.entity, self.mask_char) if action == "mask" else PLACEHOLDER[f.entity])
            last = f.end
        out.append(text[last:])
        return "".join(out)

    def spans(self, text: str) -> list[tuple[int, int]]:
        return [(f.start, f.end) for f in self.find(text)]

    def redact_text(self, text: str) -> str:
        return self.rewrite(text, self.find(text), "mask" if self.action == "mask" else "redact")

    def check(self, text: str, ctx: GuardContext | None, role: str) -> Verdict:
        findings = self.find(text)
        if not findings:
            return Verdict(True, 0.0)
        counts: dict[str, int] = {}
        for f in findings:
            counts[f.entity] = counts.get(f.entity, 0) + 1
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        v = Verdict(False, 1.0, f"found {kinds}", {"entities": counts})
        if self.action in ("redact", "mask"):
            v.text = self.rewrite(text, findings, self.action)
        return v

    def reask_message(self, verdict: Verdict) -> str:
        return self.options.message or (
            "Your previous answer contained personal data or secrets "
            f"({verdict.reason.removeprefix('found ')}). Answer again without them.")


def _resolve(found: list[Finding]) -> list[Finding]:
    """Drop overlapping findings: the longer wins (an IBAN over the card-like digits inside
    it), then the entity priority (a secret over an e-mail-like part of it)."""
    if len(found) <= 1:
        return found
    ranked = sorted(found, key=lambda f: (-(f.end - f.start), PRIORITY[f.entity], f.start))
    taken: list[Finding] = []
    for f in ranked:
        if all(f.end <= t.start or f.start >= t.end for t in taken):
            taken.append(f)
    taken.sort(key=lambda f: f.start)
    return taken


def mask(value: str, entity: str, ch: str = "*") -> str:
    """Keep just enough to recognise the value: the e-mail's first letter and domain,
    the last 4 digits of a card / IBAN / SSN, the last 2 of a phone, an IP's first octets."""

    def keep_last(s: str, n: int) -> str:
        total = sum(c.isalnum() for c in s)
        out, seen = [], 0
        for c in s:
            if c.isalnum():
                seen += 1
                out.append(c if seen > total - n else ch)
            else:
                out.append(c)
        return "".join(out)

    if entity == "email":
        local, _, domain = value.partition("@")
        return local[:1] + ch * 3 + "@" + domain
    if entity in ("credit_card", "us_ssn"):
        return keep_last(value, 4)
    if entity == "iban":
        return value[:2] + keep_last(value[2:], 4)
    if entity == "phone":
        return keep_last(value, 2)
    if entity == "ip_address":
        if "." in value:
            a, b, *_ = value.split(".")
            return f"{a}.{b}.{ch}.{ch}"
        return value.split(":")[0] + ":" + ch * 4
    return value[:4] + ch * 8 if len(value) > 12 else ch * 8
