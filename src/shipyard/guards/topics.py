"""Banned topics and keywords.

``keywords`` are exact words or phrases (case-insensitive, whole words, after the same
normalisation as the injection guard, so ``c4s1n0`` and full-width letters still
match); one hit fails the check. ``topics`` are built-in lexicons (``weapons``,
``drugs``, ``self_harm``, ``violence``, ``gambling``, ``politics``, ``religion``,
``medical_advice``, ``legal_advice``, ``financial_advice``, ``adult``, ``hate``,
``extremism``, ``crypto``) or your own ``{name, keywords}``; a topic's score is the
noisy-OR of its strong (0.7) and weak (0.3) terms, so one strong term or two weak ones
cross the default threshold of 0.5.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .base import Guard, GuardContext, GuardOptions, Verdict, noisy_or
from .normalize import deobfuscate, plain

# topic -> (strong terms, weak terms); "*" at the end of a word also matches s/es/ing/ed/er
BUILTIN_TOPICS: dict[str, tuple[str, str]] = {
    "weapons": ("firearm* | handgun* | assault rifle* | ar-15 | ak-47 | ammunition | ammo | silencer* | suppressor* "
                "| ghost gun* | 3d printed gun* | explosive* | pipe bomb* | grenade* | build a bomb | make a bomb | detonator*",
                "gun* | rifle* | pistol* | bullet* | weapon* | bomb* | shotgun* | caliber | trigger"),
    "drugs": ("cocaine | heroin | methamphetamine | crystal meth | fentanyl | lsd | mdma | ecstasy | ketamine | crack cocaine "
              "| synthesize meth | cook meth | drug dealer* | buy weed | psilocybin",
              "weed | marijuana | cannabis | meth | opioid* | overdose | high on | dealer* | narcotic*"),
    "self_harm": ("suicide | kill myself | end my life | self-harm | self harm | cut myself | hurt myself | want to die "
                  "| overdose on | hang myself",
                  "suicidal | self-injury | razor blade* | no reason to live"),
    "violence": ("murder* | kill someone | kill him | kill her | kill them | torture* | massacre* | assault someone "
                 "| beat someone up | stab* someone",
                 "attack* | fight* | violent | violence | hurt someone | blood"),
    "gambling": ("casino* | sports betting | online betting | poker site* | slot machine* | bookmaker* | roulette",
                 "bet* | gamble* | gambling | jackpot* | wager* | odds"),
    "politics": ("election* | political part* | democrat* | republican* | presidential | senator* | congress* "
                 "| parliament* | prime minister | vote for | campaign for",
                 "politic* | government* | policy | left-wing | right-wing | liberal* | conservative*"),
    "religion": ("religion* | religious | church* | mosque* | synagogue* | bible | quran | koran | torah | atheism",
                 "god | faith | pray* | worship* | christian* | muslim* | jewish | hindu* | buddhis*"),
    "medical_advice": ("diagnos* | prescri* | dosage | what medication | which medication | treatment for "
                       "| symptoms of | should i take",
                       "medic* | doctor* | disease* | illness* | pain | pill* | drug*"),
    "legal_advice": ("lawsuit* | sue | legal advice | attorney* | lawyer* | court case | custody | divorce "
                     "| contract dispute | should i sign",
                     "legal | law* | court* | illegal | liable | liability"),
    "financial_advice": ("which stock* | should i invest | investment advice | buy shares | stock tip* "
                         "| retirement portfolio | what to invest",
                         "invest* | stock* | portfolio* | crypto* | bitcoin | trading | dividend*"),
    "adult": ("porn* | nude* | naked | explicit sex* | sexual content | nsfw | erotic* | onlyfans",
              "sex* | adult content | xxx"),
    "hate": ("white power | racial slur* | ethnic cleansing | master race | hate speech | inferior race",
             "racist | racism | bigot* | supremac*"),
    "extremism": ("terrorist* | terrorism | jihad* | isis | al-qaeda | radicali* | recruit* for | manifesto",
                  "extremis* | militant* | insurgen*"),
    "crypto": ("bitcoin | ethereum | crypto* | nft* | blockchain | altcoin* | memecoin*",
               "token* | wallet* | mining | defi"),
}


class TopicDef(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    keywords: list[str] = Field(min_length=1)
    weak: list[str] = Field(default_factory=list)


class TopicsOptions(GuardOptions):
    topics: list[str | TopicDef] = Field(default_factory=list)
    keywords: list[str] = Field(default_factory=list)

    @field_validator("topics")
    @classmethod
    def _known(cls, v: list[Any]) -> list[Any]:
        for t in v:
            if isinstance(t, str) and t not in BUILTIN_TOPICS:
                raise ValueError(f"unknown topic {t!r}: built-in topics are {', '.join(sorted(BUILTIN_TOPICS))}; "
                                 "for your own use {name: ..., keywords: [...]}")
        return v


_TOKEN_RE = re.compile(r"[^\W_]+(?:['\-][^\W_]+)*")


def _terms(spec: str | list[str]) -> list[str]:
    items = spec.split("|") if isinstance(spec, str) else spec
    return [" ".join(_TOKEN_RE.findall(plain(t))) + ("*" if t.strip().endswith("*") else "")
            for t in items if t.strip()]


class _Lexicon:
    """Whole-word phrase matching over a token string: single words by set lookup,
    phrases by substring search on ``" tok tok tok "``; ``word*`` also matches suffixes."""

    SUFFIXES = ("", "s", "es", "ing", "ed", "er", "ers", "ly", "ion", "ions")

    def __init__(self, terms: list[str]) -> None:
        self.words: set[str] = set()
        self.phrases: list[str] = []
        for t in terms:
            star = t.endswith("*")
            base = t.rstrip("*").strip()
            if not base:
                continue
            forms = [base + s for s in self.SUFFIXES] if star else [base]
            for f in forms:
                (self.phrases.append(f" {f} ") if " " in f else self.words.add(f))

    def hits(self, tokens: set[str], joined: str) -> int:
        n = len(self.words & tokens)
        for p in self.phrases:
            if p in joined:
                n += 1
        return n


class BannedTopics(Guard):
    name: ClassVar[str] = "banned_topics"
    Options: ClassVar[type[GuardOptions]] = TopicsOptions
    actions: ClassVar[frozenset[str]] = frozenset({"block", "flag", "fallback"})
    output_actions: ClassVar[frozenset[str]] = frozenset({"block", "flag", "fallback", "reask"})
    default_threshold: ClassVar[float] = 0.5
    default_roles: ClassVar[tuple[str, ...]] = ("user",)
    streamable: ClassVar[bool] = True

    def __init__(self, options: GuardOptions, stage: Any) -> None:
        super().__init__(options, stage)
        o: TopicsOptions = options  # type: ignore[assignment]
        if not o.topics and not o.keywords:
            raise ValueError("list 'topics' and/or 'keywords'")
        self.topics: list[tuple[str, _Lexicon, _Lexicon]] = []
        for t in o.topics:
            if isinstance(t, str):
                strong, weak = BUILTIN_TOPICS[t]
                self.topics.append((t, _Lexicon(_terms(strong)), _Lexicon(_terms(weak))))
            else:
                self.topics.append((t.name, _Lexicon(_terms(t.keywords)), _Lexicon(_terms(t.weak))))
        self.keywords = _Lexicon(_terms(o.keywords)) if o.keywords else None

    def score(self, text: str) -> tuple[float, dict[str, float]]:
        p = plain(text)
        texts = [p]
        d = deobfuscate(p)
        if d != p:
            texts.append(d)
        found: dict[str, float] = {}
        for t in texts:
            tokens = _TOKEN_RE.findall(t)
            tset = set(tokens)
            joined = " " + " ".join(tokens) + " "
            if self.keywords is not None and self.keywords.hits(tset, joined):
                found["keywords"] = 1.0
            for name, strong, weak in self.topics:
                s = noisy_or([0.7] * strong.hits(tset, joined) + [0.3] * weak.hits(tset, joined))
                if s > found.get(name, 0.0):
                    found[name] = s
        found = {k: v for k, v in found.items() if v > 0}
        return (max(found.values()) if found else 0.0), found

    def check(self, text: str, ctx: GuardContext | None, role: str) -> Verdict:
        score, found = self.score(text)
        hit = sorted(k for k, v in found.items() if v >= (self.threshold or 0.5))
        if not hit:
            return Verdict(True, score, "", {"topics": found} if found else {})
        return Verdict(False, score, "banned topic: " + ", ".join(hit), {"topics": found})
