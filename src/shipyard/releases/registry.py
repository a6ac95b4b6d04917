"""The prompt registry: an in-process cache for the request path, and managed operations.

:class:`PromptCache` is what requests use. It is filled at start-up (``warm``) and on a
miss, and refreshed in the background when an entry is older than ``prompts.refresh_s``
(the stale entry is served meanwhile). When the store is down a cached prompt keeps being
served — refresh errors are counted and logged, never raised — so an outage of the store
does not stop traffic; only a prompt never seen before fails (503).

:class:`Registry` is what people use (admin API, CLI): create versions, move labels (with
the protected-label policy), read, diff and render; every change is audited.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from ..errors import GatewayError, NotFound
from .config import PromptsConfig
from .prompts import (
    PromptRef,
    PromptVersion,
    check_label,
    check_name,
    not_found_prompt,
    parse_ref,
    unified_diff,
    validate_version,
)
from .store import RegistryUnavailable, ReleaseStore

log = logging.getLogger("shipyard.releases")


@dataclass(slots=True)
class _Entry:
    info: dict[str, Any]
    versions: dict[int, PromptVersion] = field(default_factory=dict)
    checked: float = 0.0  # time.monotonic() of the last successful (or failed) read


def fetch(rs: ReleaseStore, name: str) -> tuple[dict[str, Any], dict[int, PromptVersion]] | None:
    info = rs.load_prompt(name)
    if info is None:
        return None
    wanted = {v["version"] for v in info["labels"].values()}
    if info["latest"] is not None:
        wanted.add(info["latest"])
    return info, rs.get_versions(name, wanted)


def _label_names(info: dict[str, Any]) -> str:
    return ", ".join(sorted(info["labels"])) or "none"


class PromptCache:
    def __init__(self, cfg: PromptsConfig, rs: ReleaseStore | None, unavailable: str | None = None) -> None:
        self.cfg = cfg
        self.rs = rs
        self.unavailable = unavailable
        self._entries: dict[str, _Entry] = {}
        self._missing: dict[str, float] = {}
        self._refreshing: set[str] = set()
        self._tasks: set[asyncio.Future[Any]] = set()
        self.hits = 0
        self.misses = 0
        self.refresh_errors = 0
        self.last_error: str | None = None
        self._last_log = 0.0

    # ---- filling -------------------------------------------------------------------
    def warm(self) -> int:
        """Load up to ``prompts.warm_limit`` prompts (blocking; at start-up). Errors are logged."""
        if self.rs is None:
            return 0
        try:
            loaded = self.rs.warm(self.cfg.warm_limit)
        except Exception as exc:
            self._note_error(exc, "warming the prompt cache")
            return 0
        now = time.monotonic()
        for info, versions in loaded:
            self._entries[info["name"]] = _Entry(info, versions, now)
        return len(loaded)

    def put(self, info: dict[str, Any] | None, versions: dict[int, PromptVersion], name: str | None = None) -> None:
        """Replace a prompt's entry (after a change made in this process); None forgets it."""
        if info is None:
            if name is not None:
                self._entries.pop(name, None)
            return
        old = self._entries.get(info["name"])
        merged = {**(old.versions if old else {}), **versions}
        self._entries[info["name"]] = _Entry(info, merged, time.monotonic())
        self._missing.pop(info["name"], None)

    def invalidate(self, name: str) -> None:
        self._entries.pop(name, None)
        self._missing.pop(name, None)

    def _note_error(self, exc: BaseException, what: str) -> None:
        self.refresh_errors += 1
        self.last_error = f"{type(exc).__name__}: {str(exc)[:200]}"
        now = time.monotonic()
        if now - self._last_log > 60:
            self._last_log = now
            log.warning("releases: %s failed (%s); serving cached prompts", what, self.last_error)

    def _unavailable(self, exc: BaseException | None = None) -> RegistryUnavailable:
        why = self.unavailable or (f"{type(exc).__name__}" if exc else "no store")
        return RegistryUnavailable(f"The prompt registry is unavailable ({why}) and this prompt is not cached.",
                                   code="registry_unavailable")

    async def _fetch(self, name: str) -> _Entry | None:
        if self.rs is None:
            raise self._unavailable()
        try:
            got = await asyncio.to_thread(fetch, self.rs, name)
        except Exception as exc:
            self._note_error(exc, f"loading prompt {name!r}")
            raise self._unavailable(exc) from None
        if got is None:
            self._missing[name] = time.monotonic()
            self._entries.pop(name, None)
            return None
        self.put(*got)
        return self._entries[name]

    def _refresh_soon(self, name: str) -> None:
        if name in self._refreshing or self.rs is None:
            return
        self._refreshing.add(name)
        entry = self._entries.get(name)
        if entry is not None:
            entry.checked = time.monotonic()  # one refresh per interval, even if it fails

        async def refresh() -> None:
            try:
                got = await asyncio.to_thread(fetch, self.rs, name)
                if got is None:
                    self._entries.pop(name, None)
                else:
                    self.put(*got)
            except Exception as exc:
                self._note_error(exc, f"refreshing prompt {name!r}")
            finally:
                self._refreshing.discard(name)

        task = asyncio.ensure_future(refresh())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- the request path ------------------------------------------------------------
    async def get(self, ref: PromptRef) -> PromptVersion:
        name, now = ref.name, time.monotonic()
        entry = self._entries.get(name)
        if entry is None:
            seen = self._missing.get(name)
            if seen is not None and now - seen < self.cfg.negative_ttl_s:
                raise not_found_prompt(name)
            self.misses += 1
            entry = await self._fetch(name)
            if entry is None:
                raise not_found_prompt(name)
        else:
            self.hits += 1
            if now - entry.checked > self.cfg.refresh_s:
                self._refresh_soon(name)
        number = self._select(entry, ref)
        if number is None and now - entry.checked > self.cfg.negative_ttl_s and self.rs is not None:
            try:  # a label or version made elsewhere (the CLI) since the last refresh
                entry = await self._fetch(name) or entry
            except RegistryUnavailable:
                pass
            number = self._select(entry, ref)
        if number is None:
            raise self._missing_selector(entry, ref)
        version = entry.versions.get(number)
        if version is None:
            if self.rs is None:
                raise self._unavailable()
            try:
                version = await asyncio.to_thread(self.rs.get_version, name, number)
            except Exception as exc:
                self._note_error(exc, f"loading prompt {name!r} version {number}")
                raise self._unavailable(exc) from None
            if version is None:
                raise self._missing_selector(entry, ref)
            entry.versions[number] = version
        return version

    @staticmethod
    def _select(entry: _Entry, ref: PromptRef) -> int | None:
        info = entry.info
        if ref.version is not None:
            latest = info["latest"]
            return ref.version if latest is not None and 1 <= ref.version <= latest else None
        if ref.label == "latest":
            return info["latest"]
        hit = info["labels"].get(ref.label)
        return None if hit is None else hit["version"]

    @staticmethod
    def _missing_selector(entry: _Entry, ref: PromptRef) -> NotFound:
        info = entry.info
        if ref.version is not None:
            return NotFound(f"Prompt '{ref.name}' has no version {ref.version} (latest is {info['latest']}).",
                            param="model", code="prompt_version_not_found")
        if ref.label == "latest":
            return NotFound(f"Prompt '{ref.name}' has no versions yet.", param="model",
                            code="prompt_version_not_found")
        return NotFound(f"Prompt '{ref.name}' has no label '{ref.label}' (labels: {_label_names(info)}).",
                        param="model", code="prompt_label_not_found")

    def stats(self) -> dict[str, Any]:
        return {"cached_prompts": len(self._entries), "hits": self.hits, "misses": self.misses,
                "refresh_errors": self.refresh_errors, "last_error": self.last_error}


class Conflict(GatewayError):
    status = 409
    type = "invalid_request_error"


class Registry:
    """Managed operations on prompts (blocking: call from a worker thread on the server)."""

    def __init__(self, rs: ReleaseStore, cfg: PromptsConfig, cache: PromptCache | None = None,
                 aliases: set[str] | None = None) -> None:
        self.rs = rs
        self.cfg = cfg
        self.cache = cache
        self.aliases = aliases  # known model aliases/routers (None: not checked, e.g. the CLI without config)

    def _sync_cache(self, name: str) -> None:
        if self.cache is not None:
            got = fetch(self.rs, name)
            if got is None:
                self.cache.invalidate(name)
            else:
                self.cache.put(*got)

    def _guard_protected(self, name: str, label: str, info: dict[str, Any] | None, force: bool) -> None:
        if label in self.cfg.protected_labels and info is not None and label in info["labels"] and not force:
            raise Conflict(f"Label '{label}' of prompt '{name}' is protected: move it with "
                           f"`shipyard release promote {name} --to {label} --gate EVAL.yaml` "
                           "(or force it, which is audited).", param="label", code="label_protected")

    def create_version(self, name: str, body: dict[str, Any], actor: str, *, force: bool = False) -> PromptVersion:
        check_name(name)
        fields = validate_version(body)
        if self.aliases is not None and fields["model"] not in self.aliases:
            from ..errors import InvalidRequest

            raise InvalidRequest(f"Invalid value for 'model': unknown model alias '{fields['model']}' "
                                 f"(configured: {', '.join(sorted(self.aliases)) or 'none'})", param="model",
                                 code="model_not_found")
        labels = body.get("labels") or []
        if not isinstance(labels, list):
            from ..errors import InvalidRequest

            raise InvalidRequest("Invalid value for 'labels': must be an array of labels", param="labels")
        labels = [check_label(label) for label in labels]
        info = self.rs.load_prompt(name)
        for label in labels:
            self._guard_protected(name, label, info, force)
        description = body.get("description")
        v = self.rs.create_version(name, fields, actor, labels=labels,
                                   description=description if isinstance(description, str) else None)
        self._sync_cache(name)
        return v

    def set_label(self, name: str, label: str, version: int, actor: str, *, force: bool = False,
                  action: str | None = None, gate: str | None = None, gate_passed: bool | None = None,
                  detail: Any = None) -> dict[str, Any]:
        check_label(label)
        info = self.get(name)
        if action is None:
            self._guard_protected(name, label, info, force)
            protected = label in self.cfg.protected_labels and label in info["labels"]
            action = "move_label_forced" if protected else "move_label"
        row = self.rs.set_label(name, label, version, actor, action=action, gate=gate, gate_passed=gate_passed,
                                detail=detail)
        self._sync_cache(name)
        return row

    def remove_label(self, name: str, label: str, actor: str, *, force: bool = False) -> dict[str, Any]:
        info = self.get(name)
        self._guard_protected(name, label, info, force)
        row = self.rs.remove_label(name, label, actor)
        self._sync_cache(name)
        return row

    def get(self, name: str) -> dict[str, Any]:
        info = self.rs.load_prompt(check_name(name))
        if info is None:
            raise not_found_prompt(name)
        return info

    def version(self, name: str, selector: str | int | None = None) -> PromptVersion:
        """A version by number, label or 'latest' (default: the default label, else latest)."""
        info = self.get(name)
        if selector is None:
            selector = self.cfg.default_label if self.cfg.default_label in info["labels"] else "latest"
        ref = parse_ref(f"{name}@{selector}")
        number = PromptCache._select(_Entry(info), ref)
        if number is None:
            raise PromptCache._missing_selector(_Entry(info), ref)
        v = self.rs.get_version(name, number)
        if v is None:
            raise PromptCache._missing_selector(_Entry(info), ref)
        return v

    def diff(self, name: str, a: str | int, b: str | int, context: int = 3) -> dict[str, Any]:
        va, vb = self.version(name, a), self.version(name, b)
        return {"name": name, "from": va.version, "to": vb.version, "diff": unified_diff(va, vb, context)}

    def render(self, ref: str, variables: dict[str, Any]) -> dict[str, Any]:
        r = parse_ref(ref, self.cfg.default_label)
        v = self.version(r.name, r.version if r.version is not None else r.label)
        out: dict[str, Any] = {"prompt": {"name": v.name, "version": v.version}, "model": v.model,
                               "messages": v.render(variables), **v.params}
        rf = v.response_format()
        if rf is not None:
            out["response_format"] = rf
        return out


def ref_of(model: str, cfg: PromptsConfig) -> PromptRef:
    return parse_ref(model, cfg.default_label)
