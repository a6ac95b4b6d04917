"""Texts with known PII spans, generated deterministically (seeded), plus look-alike
distractors that must *not* be reported (wrong checksums, order numbers, dates, versions).

Values are synthetic: card numbers are Luhn-valid test-style numbers, IBANs get a
correct mod-97 check, SSNs obey the area/group/serial rules, secrets have the real
formats with random bodies.
"""

from __future__ import annotations

import random
import string

TEMPLATES = [
    "Please update my account: {x}.",
    "Contact: {x}",
    "You can reach me at {x} any time after 5pm.",
    "The customer wrote that {x} is the right one to use for the refund.",
    "Ticket #{n}: user supplied {x} in the form, see attached.",
    "FYI {x} — keep this on file.",
    "Hi team,\nthe value is {x}\nthanks",
    "According to the CRM the details are ({x}) and the order ships Monday.",
    "{x} was entered twice in the signup form.",
    "Log line: 2024-03-01T10:22:01Z user=alice value={x} status=ok",
]
DISTRACTORS = [
    "Order {o} shipped on 2024-05-17 and arrives in 3-5 days.",
    "Release v{v} fixes 12 bugs; see build 20240517.1.",
    "The meeting is on 12.05.2024 at 10:30 in room 4.12.",
    "Tracking number 1Z999AA10123456784 (UPS).",
    "Invoice INV-{n} totals 1,234.56 EUR, due 30/06/2024.",
    "ISBN 978-0-306-40615-7 is the reference edition.",
    "Call extension 4410 or dial 0 for reception.",
    "Our zip code is 94107 and the suite is 300.",
    "The product code is SKU-{n}-XL and the batch is {o}.",
    "Card ending in 4242 was charged 19.99 USD.",
    "Coordinates: 37.7749, -122.4194 (San Francisco).",
    "Temperature rose from 12.5 to 18.25 degrees by 14:00.",
    "Population grew to 8,336,817 in 2023 according to the census.",
    "Use the api_key parameter described in section 4.2 of the docs.",
    "The password must be at least 12 characters long.",
    "Reference DE89 3704 0044 0532 0130 01 is a malformed IBAN (bad check digits).",
    "Reference number 4111 1111 1111 1112 failed validation.",
    "Version string 10.0.19045.3803 identifies Windows 10 22H2.",
    "SSN format is AAA-GG-SSSS; 000-12-3456 is never issued.",
    "The call lasted 1:23:45 and cost $4.50.",
]


def luhn_digit(body: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return str((10 - total % 10) % 10)


def card(r: random.Random) -> str:
    prefix, length = r.choice([("4", 16), ("51", 16), ("55", 16), ("2221", 16), ("34", 15), ("37", 15),
                               ("6011", 16), ("4", 13), ("3530", 16)])
    body = prefix + "".join(r.choice(string.digits) for _ in range(length - len(prefix) - 1))
    num = body + luhn_digit(body)
    style = r.choice(["space", "dash", "none"])
    if length == 15:
        groups = [num[:4], num[4:10], num[10:]]
    else:
        groups = [num[i:i + 4] for i in range(0, len(num), 4)]
    return {"space": " ".join(groups), "dash": "-".join(groups), "none": num}[style]


IBAN_FORMATS = {"DE": "18n", "GB": "4a14n", "FR": "23n", "NL": "4a10n", "ES": "20n", "IT": "1a22n", "CH": "17n",
                "BE": "12n", "AT": "16n", "PL": "24n"}


def iban(r: random.Random) -> str:
    cc = r.choice(sorted(IBAN_FORMATS))
    fmt = IBAN_FORMATS[cc]
    bban = ""
    n = ""
    for ch in fmt:
        if ch.isdigit():
            n += ch
            continue
        alphabet = string.digits if ch == "n" else string.ascii_uppercase
        bban += "".join(r.choice(alphabet) for _ in range(int(n)))
        n = ""
    moved = bban + cc + "00"
    check = 98 - int("".join(str(int(c, 36)) for c in moved)) % 97
    s = f"{cc}{check:02d}{bban}"
    if r.random() < 0.6:
        s = " ".join(s[i:i + 4] for i in range(0, len(s), 4))
    return s


def ssn(r: random.Random) -> str:
    while True:
        area = r.randint(1, 899)
        if area != 666:
            break
    v = f"{area:03d}-{r.randint(1, 99):02d}-{r.randint(1, 9999):04d}"
    return v if r.random() < 0.8 else v.replace("-", " ")


def phone(r: random.Random) -> str:
    d = lambda k: "".join(r.choice(string.digits) for _ in range(k))  # noqa: E731
    area = str(r.randint(201, 989))
    return r.choice([
        f"+1 {area} {d(3)} {d(4)}", f"({area}) {d(3)}-{d(4)}", f"{area}-{d(3)}-{d(4)}", f"{area}.{d(3)}.{d(4)}",
        f"+44 20 {d(4)} {d(4)}", f"+49 30 {d(8)}", f"+33 6 {d(2)} {d(2)} {d(2)} {d(2)}", f"030 {d(4)} {d(4)}",
        f"06 {d(2)} {d(2)} {d(2)} {d(2)}", f"+91 {d(5)} {d(5)}", f"1-800-{d(3)}-{d(4)}", f"+49 (0)30 {d(4)} {d(4)}",
        f"+61 4{d(2)} {d(3)} {d(3)}", f"020 {d(4)} {d(4)}",
    ])


def email(r: random.Random) -> str:
    first = r.choice(["ann", "bob", "carla", "dmitri", "eve", "farah", "li.wei", "o'neil", "sam_k", "zoe"])
    tag = r.choice(["", "", "+news", ".work", str(r.randint(1, 99))])
    dom = r.choice(["example.com", "mail.example.org", "corp.example.co.uk", "uni.example.edu", "x.example.io"])
    return f"{first.replace(chr(39), '')}{tag}@{dom}"


def ip(r: random.Random) -> str:
    if r.random() < 0.8:
        return ".".join(str(r.randint(1, 254)) for _ in range(4))
    return r.choice(["2001:db8::1", "fe80::1ff:fe23:4567:890a", "2001:0db8:85a3:0000:0000:8a2e:0370:7334",
                     "2606:4700:4700::1111"])


def secret(r: random.Random) -> str:
    a = lambda k, al=string.ascii_letters + string.digits: "".join(r.choice(al) for _ in range(k))  # noqa: E731
    return r.choice([
        "AKIA" + a(16, string.ascii_uppercase + string.digits),
        "ghp_" + a(36),
        "sk-proj-" + a(40) + "-" + a(8),
        "sk-ant-api03-" + a(60),
        "xoxb-" + a(11, string.digits) + "-" + a(24),
        "sk_live_" + a(24),
        "AIza" + a(35),
        "eyJhbGciOiJIUzI1NiJ9.eyJ" + a(30) + "." + a(43),
        "glpat-" + a(20),
        "hf_" + a(34),
    ])


SEEDS = {"dev": 11, "test": 7}
GENERATORS = {"email": email, "phone": phone, "credit_card": card, "iban": iban, "us_ssn": ssn,
              "ip_address": ip, "secret": secret}


def samples(n: int = 420, seed: int = 7) -> list[tuple[str, list[tuple[int, int, str]]]]:
    """(text, [(start, end, entity)]) — about 1/4 of the texts are distractors only."""
    r = random.Random(seed)
    out = []
    kinds = sorted(GENERATORS)
    for i in range(n):
        if i % 4 == 3:
            t = r.choice(DISTRACTORS).format(o=r.randint(10**9, 10**10), v=f"{r.randint(1, 9)}.{r.randint(0, 20)}.{r.randint(0, 9)}",
                                            n=r.randint(1000, 99999))
            out.append((t, []))
            continue
        k = kinds[i % len(kinds)] if r.random() < 0.7 else r.choice(kinds)
        value = GENERATORS[k](r)
        tpl = r.choice(TEMPLATES)
        if k == "secret" and r.random() < 0.3:
            value_text = f"api_key={value}"
            text = tpl.format(x=value_text, n=r.randint(1000, 9999))
            start = text.index(value)
        elif k == "us_ssn" and r.random() < 0.2:
            bare = value.replace("-", "").replace(" ", "")
            text = tpl.format(x=f"SSN {bare}", n=r.randint(1000, 9999))
            value = bare
            start = text.index(value)
        else:
            text = tpl.format(x=value, n=r.randint(1000, 9999))
            start = text.index(value)
        spans = [(start, start + len(value), k)]
        if r.random() < 0.3:  # a second entity in the same text
            k2 = r.choice([x for x in kinds if x != k])
            v2 = GENERATORS[k2](r)
            text2 = f"{text} Also {v2}."
            s2 = text2.rindex(v2)
            text, spans = text2, spans + [(s2, s2 + len(v2), k2)]
        out.append((text, spans))
    return out
