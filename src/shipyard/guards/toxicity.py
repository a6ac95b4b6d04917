"""Harmful or toxic content.

Two backends, chosen by ``backend``:

* ``heuristic`` (default, no dependencies): threats and incitement aimed at a person,
  self-harm encouragement, slurs, insults aimed at the reader, and profanity, each with a
  weight, combined by noisy-OR. "kill the process" and "shoot a photo" are not threats:
  violent verbs count only with a personal object.
* ``ml``: ``alt-profanity-check`` (a linear SVM over TF-IDF whose weights ship inside the
  PyPI package; ``pip install 'shipyard[guards-ml]'``), run in a worker thread.
* ``both``: the higher of the two scores.
"""

from __future__ import annotations

import asyncio
import re
import threading
from typing import Any, ClassVar, Literal

from .base import Guard, GuardContext, GuardOptions, Verdict, noisy_or
from .normalize import deobfuscate, plain
from .prefilter import FastPattern, bounded

_YOU = r"(?:you|u|ya|your family|your kids|your mother|your mom|him|her|them|everyone|all of you)"
PATTERNS: list[tuple[str, float, str]] = [
    ("threat", 0.9, rf"\b(?:i(?:'ll| will| am going to|'m going to|'m gonna| gonna)|we(?:'ll| will| are going to))\s+(?:\w+\s+)?(?:kill|murder|hurt|beat|stab|shoot|strangle|rape|destroy|end|find|hunt down|burn)\s+{_YOU}\b"),
    ("threat", 0.85, r"\b(?:you(?:'re| are) (?:dead|going to die|gonna die)|watch your back|i know where you live|you will (?:pay|regret|suffer))\b"),
    ("threat", 0.8, r"\b(?:should|deserve[sd]? to|ought to|needs? to)\s+(?:be\s+)?(?:die|killed|shot|hanged|raped|burned|beaten|tortured)\b"),
    ("self_harm", 0.95, r"\b(?:kill|hang|cut|hurt) yourself\b|\bkys\b|\bgo die\b|\bdrink bleach\b|\byou should (?:just )?die\b|\bnobody would miss you\b"),
    ("insult", 0.75, r"\b(?:you(?:'re| are| r)|ur|you|such an?)\s+(?:\w+\s+)?(?:an?\s+)?(?:idiot|moron|imbecile|stupid|dumb|retard(?:ed)?|loser|pathetic|worthless|useless piece|scum|trash|garbage|disgusting|pig|clown|dumbass|jackass|bitch|bastard|asshole|dickhead|cunt|whore|slut|freak|subhuman|vermin|cockroach)\b"),
    ("insult", 0.8, r"\b(?:fuck|screw|f\*ck|stfu|shut the fuck up)\s+(?:you|off|yourself|u)\b|\bshut up\b[^.\n]{0,20}\b(?:idiot|moron|stupid|loser|bitch)\b|\bgo to hell\b|\bdie in a fire\b"),
    ("hate", 0.9, r"\b(?:nigg(?:er|a)s?|f[a@]gg?ots?|k[iy]kes?|sp[i1]cs?|ch[i1]nks?|tr[a@]nn(?:y|ies)|wetbacks?|raghead|towelhead|gooks?|coons?)\b"),
    ("hate", 0.85, r"\b(?:all|those|these|the)\s+(?:\w+\s+)?(?:immigrants|muslims|jews|christians|blacks|whites|gays|women|men|mexicans|arabs|asians)\s+(?:are|should)\s+(?:\w+\s+)?(?:vermin|animals|subhuman|inferior|parasites|scum|be (?:killed|exterminated|deported|gassed)|die)\b"),
    ("profanity", 0.4, r"\b(?:fuck\w*|shit\w*|bitch\w*|cunt\w*|asshole\w*|bastard\w*|dick(?:head)?s?|piss(?:ed)? off|motherfuck\w*|bullshit|crap|damn|wtf|f+u+c+k+)\b"),
    ("sexual_harassment", 0.85, r"\b(?:send (?:me )?(?:nudes|naked pics)|show me your (?:tits|boobs|body)|i want to (?:fuck|rape) (?:you|her|him))\b"),
]


_PROFANITY = re.compile(next(p for s, _, p in PATTERNS if s == "profanity"))


class ToxicityOptions(GuardOptions):
    backend: Literal["heuristic", "ml", "both"] = "heuristic"


class Toxicity(Guard):
    name: ClassVar[str] = "toxicity"
    Options: ClassVar[type[GuardOptions]] = ToxicityOptions
    actions: ClassVar[frozenset[str]] = frozenset({"block", "flag", "fallback"})
    output_actions: ClassVar[frozenset[str]] = frozenset({"block", "flag", "fallback", "reask"})
    default_threshold: ClassVar[float] = 0.5
    default_roles: ClassVar[tuple[str, ...]] = ("user",)
    streamable: ClassVar[bool] = True

    _compiled: ClassVar[list[tuple[str, float, FastPattern]] | None] = None
    _ml: ClassVar[Any] = None
    _ml_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, options: GuardOptions, stage: Any) -> None:
        super().__init__(options, stage)
        self.backend = options.backend  # type: ignore[attr-defined]
        if Toxicity._compiled is None:
            Toxicity._compiled = [(s, w, FastPattern(bounded(p))) for s, w, p in PATTERNS]
        if self.backend != "heuristic":
            try:
                import profanity_check  # type: ignore[import-untyped]  # noqa: F401
            except ImportError:
                raise ValueError("backend 'ml' needs alt-profanity-check: pip install 'shipyard[guards-ml]'") from None

    @property
    def threaded(self) -> bool:  # type: ignore[override]
        return self.backend != "heuristic"

    async def start(self, engine: Any) -> None:
        if self.backend != "heuristic":
            await asyncio.to_thread(self._model)

    @classmethod
    def _model(cls) -> Any:
        with cls._ml_lock:
            if cls._ml is None:
                from profanity_check import predict_prob  # type: ignore[import-untyped]

                predict_prob(["warm up"])
                cls._ml = predict_prob
        return cls._ml

    def heuristic_score(self, text: str) -> tuple[float, dict[str, float]]:
        p = plain(text)
        texts = [p]
        d = deobfuscate(p)
        if d != p:
            texts.append(d)
        best: dict[str, float] = {}
        for t in texts:
            for sig, w, rx in self._compiled:  # type: ignore[union-attr]
                if w > best.get(sig, 0.0) and rx.search(t):
                    best[sig] = w
        if "profanity" in best:  # several different swear words add up
            n = len(set(_PROFANITY.findall(p)))
            best["profanity"] = min(0.9, noisy_or([0.4] * max(1, min(n, 4))))
        return noisy_or(best.values()), best

    def score(self, text: str) -> tuple[float, dict[str, float]]:
        signals: dict[str, float] = {}
        score = 0.0
        if self.backend in ("heuristic", "both"):
            score, signals = self.heuristic_score(text)
        if self.backend in ("ml", "both"):
            ml = float(self._model()([text[:20_000]])[0])
            signals["ml"] = round(ml, 4)
            score = max(score, ml)
        return round(score, 4), signals

    def check(self, text: str, ctx: GuardContext | None, role: str) -> Verdict:
        score, signals = self.score(text)
        if score < (self.threshold or 0.5):
            return Verdict(True, score, "", {"signals": signals} if signals else {})
        kinds = ", ".join(sorted(k for k in signals if k != "ml")) or "ml classifier"
        return Verdict(False, score, f"harmful or toxic content ({kinds})", {"signals": signals})
