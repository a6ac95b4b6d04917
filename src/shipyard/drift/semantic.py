"""Semantic drift on embeddings: a domain classifier and topic clusters.

Domain classifier: logistic regression learns to tell reference from current embeddings
(equal numbers of each); its 5-fold cross-validated ROC AUC is ~0.5 when the two are alike
and approaches 1 when they are easy to tell apart. Drift when AUC > ``domain_auc`` and above
the noise floor of a classifier that learned nothing (0.5 + 3 standard deviations, which
matters for small samples only). The
current records it finds most "current-like" are shown as examples.

Topics: k-means over the current sample; every reference record goes to its nearest topic,
giving each topic's share of each window. A topic is *new* when at most 1% of the reference
falls in it (and the difference is significant: two-proportion z-test, p < 0.01), *grown*
when its share rose by at least ``cluster_share`` (absolute, significant), *shrunk* the
other way. Drift when a topic grew, or when new topics together hold at least
``new_topic_share`` of the current window. Each cluster lists keywords (words frequent in it and rare
elsewhere) and example inputs nearest its centre, so a person can read what it is about.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any

import numpy as np

from .descriptors import STOPWORDS
from .stats import DRIFT, NO_DRIFT, NOT_ENOUGH, not_enough, two_proportion_p

EXAMPLES = 5
NEW_MAX_REF_SHARE = 0.01
MIN_NEW_COUNT = 5
SIGNIFICANCE = 0.01
EXAMPLE_CHARS = 400
_KEYWORD = re.compile(r"[^\W\d_]{3,}", re.UNICODE)


def _clip(text: str | None) -> str:
    text = (text or "").strip()
    return text if len(text) <= EXAMPLE_CHARS else text[:EXAMPLE_CHARS] + "…"


def domain_classifier(xr: np.ndarray, xc: np.ndarray, texts_c: list[str], th: dict[str, float],
                      seed: int = 0) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    out: dict[str, Any] = {"name": "domain_classifier", "test": "roc_auc", "threshold": th["domain_auc"],
                           "n_reference": int(len(xr)), "n_current": int(len(xc)), "statistic": None}
    reason = not_enough(len(xr), len(xc), int(th["min_samples"]))
    if reason:
        out.update(verdict=NOT_ENOUGH, reason=reason)
        return out
    rng = np.random.default_rng(seed)
    n = min(len(xr), len(xc))
    ir = np.sort(rng.choice(len(xr), n, replace=False))
    ic = np.sort(rng.choice(len(xc), n, replace=False))
    x = np.vstack([xr[ir], xc[ic]])
    y = np.concatenate([np.zeros(n, dtype=int), np.ones(n, dtype=int)])
    folds = min(5, n)
    clf = LogisticRegression(C=1.0, max_iter=2000)
    proba = cross_val_predict(clf, x, y, cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
                              method="predict_proba")[:, 1]
    auc = float(roc_auc_score(y, proba))
    # the AUC of a classifier that learned nothing has standard deviation sqrt((2n+1)/(12n^2))
    # (Mann-Whitney); demanding 3 of them above 0.5 keeps small samples from flagging noise
    noise = 0.5 + 3 * math.sqrt((2 * n + 1) / (12 * n * n))
    out.update(statistic=round(auc, 4), balanced_n=int(n), noise_floor=round(noise, 4),
               verdict=DRIFT if auc > max(th["domain_auc"], noise) else NO_DRIFT)
    cur_scores = proba[n:]
    top = np.argsort(-cur_scores)[:EXAMPLES]
    out["examples"] = [{"text": _clip(texts_c[int(ic[i])]), "score": round(float(cur_scores[i]), 3)}
                       for i in top if texts_c[int(ic[i])]]
    return out


def _keywords(texts: list[str], background: Counter[str], n_background: int, k: int = 6) -> list[str]:
    """Words frequent in ``texts`` and rare in the background (class-based TF-IDF)."""
    tf: Counter[str] = Counter()
    for t in texts:
        tf.update({w for w in (m.lower() for m in _KEYWORD.findall(t[:2000])) if w not in STOPWORDS})
    scored = []
    for w, c in tf.items():
        if c < 2 and len(texts) > 3:
            continue
        idf = math.log(1 + n_background / (1 + background[w]))
        scored.append((c / max(1, len(texts)) * idf, w))
    scored.sort(reverse=True)
    return [w for _, w in scored[:k]]


def _distinct(texts: list[str], order: Any, n: int) -> list[str]:
    """The first ``n`` different texts in ``order`` (clipped for display)."""
    out: dict[str, None] = {}
    for i in order[: n * 20]:
        t = texts[int(i)]
        if t:
            out.setdefault(_clip(t), None)
            if len(out) >= n:
                break
    return list(out)


def choose_k(n: int) -> int:
    """Enough clusters that a topic of a few percent gets one of its own (clusters of one
    topic that split show up as two rows with the same keywords, which is harmless)."""
    return int(max(2, min(40, round(math.sqrt(n / 2)))))


def topic_clusters(xr: np.ndarray, xc: np.ndarray, texts_r: list[str], texts_c: list[str],
                   th: dict[str, float], seed: int = 0, k: int | None = None) -> dict[str, Any]:
    """Topics of the current window (k-means fitted on it) and how much of each window falls
    in each (reference records go to their nearest topic). Fitting on the current side lets
    a topic that is new in production get clusters of its own instead of being absorbed by
    the reference's larger topics."""
    from sklearn.cluster import KMeans, MiniBatchKMeans

    out: dict[str, Any] = {"name": "topics", "n_reference": int(len(xr)), "n_current": int(len(xc)),
                           "threshold": th["cluster_share"], "new_threshold": th["new_topic_share"], "clusters": []}
    reason = not_enough(len(xr), len(xc), int(th["min_samples"]))
    if reason:
        out.update(verdict=NOT_ENOUGH, reason=reason)
        return out
    k = min(k or choose_k(len(xc)), len(xc))
    if len(xc) > 20_000:
        km = MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=3, batch_size=2048)
    else:
        km = KMeans(n_clusters=k, random_state=seed, n_init=4)
    lc = km.fit_predict(xc)
    lr = km.predict(xr)
    centers = km.cluster_centers_
    n_r, n_c = len(xr), len(xc)
    background: Counter[str] = Counter()
    for t in texts_r + texts_c:
        background.update({w.lower() for w in _KEYWORD.findall(t[:2000])})
    n_bg = n_r + n_c
    clusters = []
    for j in range(k):
        kr, kc = int((lr == j).sum()), int((lc == j).sum())
        sr, sc = kr / n_r, kc / n_c
        p = two_proportion_p(kr, n_r, kc, n_c)
        delta = sc - sr
        significant = p < SIGNIFICANCE
        if sr <= NEW_MAX_REF_SHARE and kc >= MIN_NEW_COUNT and significant:
            status = "new"
        elif delta >= th["cluster_share"] and significant:
            status = "grown"
        elif -delta >= th["cluster_share"] and significant:
            status = "shrunk"
        else:
            status = "stable"
        cur_members = np.where(lc == j)[0]
        ref_members = np.where(lr == j)[0]
        cur_near = cur_members[np.argsort(np.linalg.norm(xc[cur_members] - centers[j], axis=1))]
        ref_near = ref_members[np.argsort(np.linalg.norm(xr[ref_members] - centers[j], axis=1))]
        clusters.append({
            "id": j, "status": status, "reference_share": round(sr, 4), "current_share": round(sc, 4),
            "delta": round(delta, 4), "reference_count": kr, "current_count": kc, "p_value": float(f"{p:.3g}"),
            "keywords": _keywords([texts_c[int(i)] for i in cur_members[:2000]], background, n_bg),
            "examples": _distinct(texts_c, cur_near, EXAMPLES),
            "reference_examples": _distinct(texts_r, ref_near, 3),
        })
    rank = {"new": 0, "grown": 1, "shrunk": 2, "stable": 3}
    clusters.sort(key=lambda c: (rank[c["status"]], -abs(c["delta"])))
    new = [c for c in clusters if c["status"] == "new"]
    grown = [c for c in clusters if c["status"] == "grown"]
    new_share = round(sum(c["current_share"] for c in new), 4)
    drift = bool(grown) or new_share >= th["new_topic_share"]
    out.update(k=k, clusters=clusters, verdict=DRIFT if drift else NO_DRIFT, new_share=new_share,
               new=[c["id"] for c in new], grown=[c["id"] for c in grown])
    return out


def analyze(embedder: Any, ref_texts: list[str], cur_texts: list[str], th: dict[str, float],
            seed: int = 0) -> dict[str, Any]:
    """Both semantic checks for one side (input or output texts)."""
    out: dict[str, Any] = {"n_reference": len(ref_texts), "n_current": len(cur_texts)}
    reason = not_enough(len(ref_texts), len(cur_texts), int(th["min_samples"]))
    if reason:
        out.update(verdict=NOT_ENOUGH, reason=reason,
                   domain_classifier={"name": "domain_classifier", "verdict": NOT_ENOUGH, "reason": reason,
                                      "threshold": th["domain_auc"], "statistic": None},
                   topics={"name": "topics", "verdict": NOT_ENOUGH, "reason": reason, "clusters": []})
        return out
    from threadpoolctl import threadpool_limits

    vecs = embedder.embed(ref_texts + cur_texts)
    xr, xc = vecs[: len(ref_texts)], vecs[len(ref_texts):]
    with threadpool_limits(limits=1):  # small problems: threads only contend on 2 busy cores
        dc = domain_classifier(xr, xc, cur_texts, th, seed)
        topics = topic_clusters(xr, xc, ref_texts, cur_texts, th, seed)
    verdict = DRIFT if DRIFT in (dc["verdict"], topics["verdict"]) else NO_DRIFT
    out.update(domain_classifier=dc, topics=topics, verdict=verdict, dims=int(vecs.shape[1]))
    return out
