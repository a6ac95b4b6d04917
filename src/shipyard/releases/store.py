"""SQL for the release tables, over any :class:`~shipyard.store.sql.SQLStore` backend.

Every method is blocking (call it from a worker thread on the server). Writes that belong
together — a new version and its labels, a label move and its audit row — share one
transaction. List queries are bounded by time and cursor-paginated.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from decimal import Decimal
from typing import Any


from ..errors import GatewayError, InvalidRequest, NotFound
from ..store.base import decode_cursor, encode_cursor, json_text, json_value
from .prompts import PromptVersion, not_found_prompt

MAX_LIST = 500


_j, _l = json_text, json_value  # JSON columns (store/base.py)


def _dicts(cur: Any) -> list[dict[str, Any]]:
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r)) for r in cur.fetchall()]


def _conflict(exc: BaseException) -> bool:
    name = type(exc).__name__
    return "IntegrityError" in name or "UniqueViolation" in name


def _in(n: int) -> str:
    return "(" + ", ".join("?" * n) + ")"


def _num(v: Any) -> Any:
    """Decimal (PostgreSQL aggregates) -> float; everything else unchanged.

    Only Decimal is converted: ids are hex strings and some of them ("605e7563...") read as floats.
    """
    return float(v) if isinstance(v, Decimal) else v


class RegistryUnavailable(GatewayError):
    status = 503
    type = "api_error"


class ReleaseStore:
    """The release tables of one store (the engine's, or one the CLI opened)."""

    def __init__(self, store: Any) -> None:
        if store is None or not hasattr(store, "_write"):
            raise RegistryUnavailable("The prompt registry needs a SQL store (store: sqlite:///... or "
                                      "postgresql://...); this gateway runs with store: none.",
                                      code="registry_unavailable")
        from . import schema  # noqa: F401  (registers the 'releases' migrations)

        self.store = store
        self.q = store.dialect.q
        store.migrate()  # idempotent: applies the releases steps if this store predates them

    # ---- prompts: reads --------------------------------------------------------------
    @staticmethod
    def _version(row: dict[str, Any]) -> PromptVersion:
        return PromptVersion(
            name=row["name"], version=int(row["version"]), model=row["model"], messages=_l(row["messages"]),
            params=_l(row["params"]) or {}, response_schema=_l(row["response_schema"]),
            variables=_l(row["variables"]) or [], note=row["note"], created_at=_num(row["created_at"]),
            created_by=row["created_by"],
        )

    def load_prompt(self, name: str) -> dict[str, Any] | None:
        """{name, description, created_at, created_by, latest, labels: {label: {...}}} or None."""
        q = self.q
        with self.store._read() as cur:
            cur.execute(q("SELECT name, description, created_at, created_by FROM prompts WHERE name = ?"), (name,))
            rows = _dicts(cur)
            if not rows:
                return None
            p = rows[0]
            cur.execute(q("SELECT MAX(version), COUNT(*) FROM prompt_versions WHERE name = ?"), (name,))
            latest, count = cur.fetchone()
            cur.execute(q("SELECT label, version, updated_at, updated_by FROM prompt_labels WHERE name = ? "
                          "ORDER BY label"), (name,))
            labels = {r["label"]: {"version": int(r["version"]), "updated_at": _num(r["updated_at"]),
                                   "updated_by": r["updated_by"]} for r in _dicts(cur)}
        return {**p, "created_at": _num(p["created_at"]), "latest": None if latest is None else int(latest),
                "versions": int(count or 0), "labels": labels}

    def get_version(self, name: str, version: int) -> PromptVersion | None:
        with self.store._read() as cur:
            cur.execute(self.q("SELECT * FROM prompt_versions WHERE name = ? AND version = ?"), (name, version))
            rows = _dicts(cur)
        return self._version(rows[0]) if rows else None

    def get_versions(self, name: str, versions: Iterable[int]) -> dict[int, PromptVersion]:
        vs = sorted(set(versions))
        if not vs:
            return {}
        with self.store._read() as cur:
            cur.execute(self.q(f"SELECT * FROM prompt_versions WHERE name = ? AND version IN {_in(len(vs))}"),
                        (name, *vs))
            return {int(r["version"]): self._version(r) for r in _dicts(cur)}

    def list_versions(self, name: str, limit: int = 50, before: int | None = None) -> list[dict[str, Any]]:
        """Newest first, without message bodies; ``before`` pages (a version number)."""
        limit = max(1, min(limit, MAX_LIST))
        where, args = "name = ?", [name]
        if before is not None:
            where += " AND version < ?"
            args.append(before)
        with self.store._read() as cur:
            cur.execute(self.q(f"SELECT name, version, model, variables, note, created_at, created_by "
                               f"FROM prompt_versions WHERE {where} ORDER BY version DESC LIMIT ?"), (*args, limit))
            rows = _dicts(cur)
        for r in rows:
            r["version"] = int(r["version"])
            r["variables"] = _l(r["variables"]) or []
            r["created_at"] = _num(r["created_at"])
        return rows

    def list_prompts(self, limit: int = 100, after: str | None = None) -> list[dict[str, Any]]:
        """Prompts by name (``after`` pages), each with its latest version and labels."""
        limit = max(1, min(limit, MAX_LIST))
        q = self.q
        where, args = ("WHERE p.name > ?", [after]) if after else ("", [])
        with self.store._read() as cur:
            cur.execute(q(f"SELECT p.name, p.description, p.created_at, p.created_by, "
                          f"(SELECT MAX(v.version) FROM prompt_versions v WHERE v.name = p.name) AS latest, "
                          f"(SELECT MAX(v.created_at) FROM prompt_versions v WHERE v.name = p.name) AS updated_at "
                          f"FROM prompts p {where} ORDER BY p.name LIMIT ?"), (*args, limit))
            rows = _dicts(cur)
            names = [r["name"] for r in rows]
            labels: dict[str, dict[str, int]] = {n: {} for n in names}
            if names:
                cur.execute(q(f"SELECT name, label, version FROM prompt_labels WHERE name IN {_in(len(names))} "
                              "ORDER BY name, label"), names)
                for n, label, v in cur.fetchall():
                    labels[n][label] = int(v)
        for r in rows:
            r["latest"] = None if r["latest"] is None else int(r["latest"])
            r["created_at"], r["updated_at"] = _num(r["created_at"]), _num(r["updated_at"])
            r["labels"] = labels[r["name"]]
        return rows

    def warm(self, limit: int) -> list[tuple[dict[str, Any], dict[int, PromptVersion]]]:
        """Up to ``limit`` prompts with their labelled and latest versions (the cache at start-up)."""
        out = []
        if limit <= 0:
            return out
        for p in self.list_prompts(limit=min(limit, MAX_LIST)):
            info = self.load_prompt(p["name"])
            if info is None:
                continue
            wanted = {v["version"] for v in info["labels"].values()}
            if info["latest"] is not None:
                wanted.add(info["latest"])
            out.append((info, self.get_versions(p["name"], wanted)))
        return out

    # ---- prompts: writes -------------------------------------------------------------
    def _audit(self, cur: Any, actor: str, action: str, prompt: str | None, label: str | None = None,
               from_version: int | None = None, to_version: int | None = None, gate: str | None = None,
               gate_passed: bool | None = None, detail: Any = None) -> dict[str, Any]:
        row = {"id": uuid.uuid4().hex, "ts": time.time(), "actor": actor, "action": action, "prompt": prompt,
               "label": label, "from_version": from_version, "to_version": to_version, "gate": gate,
               "gate_passed": None if gate_passed is None else int(bool(gate_passed)), "detail": _j(detail)}
        cur.execute(self.q(f"INSERT INTO release_audit ({', '.join(row)}) VALUES {_in(len(row))}"), tuple(row.values()))
        return row

    def _set_label(self, cur: Any, name: str, label: str, version: int, actor: str) -> int | None:
        q = self.q
        cur.execute(q("SELECT version FROM prompt_labels WHERE name = ? AND label = ?"), (name, label))
        old = cur.fetchone()
        cur.execute(q("INSERT INTO prompt_labels (name, label, version, updated_at, updated_by) VALUES (?, ?, ?, ?, ?) "
                      "ON CONFLICT (name, label) DO UPDATE SET version = excluded.version, "
                      "updated_at = excluded.updated_at, updated_by = excluded.updated_by"),
                    (name, label, version, time.time(), actor))
        return None if old is None else int(old[0])

    def create_version(self, name: str, fields: dict[str, Any], actor: str, *, labels: Iterable[str] = (),
                       description: str | None = None) -> PromptVersion:
        """Append a version (numbered max + 1) and point ``labels`` at it, audited. Concurrent
        creators are serialised: SQLite's write lock, PostgreSQL's row lock on the prompt."""
        q = self.q
        for attempt in range(3):
            try:
                with self.store._write() as cur:
                    now = time.time()
                    cur.execute(q("INSERT INTO prompts (name, description, created_at, created_by) VALUES (?, ?, ?, ?) "
                                  "ON CONFLICT (name) DO NOTHING"), (name, description, now, actor))
                    if self.store.dialect.name == "postgresql":  # one version at a time per prompt
                        cur.execute(q("SELECT name FROM prompts WHERE name = ? FOR UPDATE"), (name,))
                    if description is not None:
                        cur.execute(q("UPDATE prompts SET description = ? WHERE name = ?"), (description, name))
                    cur.execute(q("SELECT COALESCE(MAX(version), 0) FROM prompt_versions WHERE name = ?"), (name,))
                    version = int(cur.fetchone()[0]) + 1
                    cur.execute(q("INSERT INTO prompt_versions (name, version, model, messages, params, response_schema, "
                                  "variables, note, created_at, created_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"),
                                (name, version, fields["model"], _j(fields["messages"]), _j(fields.get("params") or {}),
                                 _j(fields.get("response_schema")), _j(fields.get("variables") or []),
                                 fields.get("note"), now, actor))
                    self._audit(cur, actor, "create_version", name, to_version=version,
                                detail={"note": fields.get("note")} if fields.get("note") else None)
                    for label in labels:
                        old = self._set_label(cur, name, label, version, actor)
                        self._audit(cur, actor, "move_label", name, label, old, version)
                return PromptVersion(name=name, version=version, model=fields["model"], messages=fields["messages"],
                                     params=fields.get("params") or {}, response_schema=fields.get("response_schema"),
                                     variables=fields.get("variables") or [], note=fields.get("note"),
                                     created_at=now, created_by=actor)
            except Exception as exc:
                if attempt == 2 or not _conflict(exc):
                    raise
        raise AssertionError("unreachable")

    def set_label(self, name: str, label: str, version: int, actor: str, *, action: str = "move_label",
                  gate: str | None = None, gate_passed: bool | None = None, detail: Any = None) -> dict[str, Any]:
        """Point ``label`` at ``version`` (which must exist), with an audit row; returns the audit row."""
        q = self.q
        with self.store._write() as cur:
            cur.execute(q("SELECT 1 FROM prompt_versions WHERE name = ? AND version = ?"), (name, version))
            if cur.fetchone() is None:
                cur.execute(q("SELECT MAX(version) FROM prompt_versions WHERE name = ?"), (name,))
                latest = cur.fetchone()[0]
                if latest is None:
                    raise not_found_prompt(name)
                raise NotFound(f"Prompt '{name}' has no version {version} (latest is {int(latest)}).",
                               param="version", code="prompt_version_not_found")
            old = self._set_label(cur, name, label, version, actor)
            return self._audit(cur, actor, action, name, label, old, version, gate, gate_passed, detail)

    def remove_label(self, name: str, label: str, actor: str) -> dict[str, Any]:
        q = self.q
        with self.store._write() as cur:
            cur.execute(q("SELECT version FROM prompt_labels WHERE name = ? AND label = ?"), (name, label))
            old = cur.fetchone()
            if old is None:
                raise NotFound(f"Prompt '{name}' has no label '{label}'.", param="label", code="prompt_label_not_found")
            cur.execute(q("DELETE FROM prompt_labels WHERE name = ? AND label = ?"), (name, label))
            return self._audit(cur, actor, "remove_label", name, label, int(old[0]), None)

    def record_audit(self, actor: str, action: str, prompt: str | None, **kw: Any) -> dict[str, Any]:
        with self.store._write() as cur:
            return self._audit(cur, actor, action, prompt, **kw)

    def list_audit(self, *, prompt: str | None = None, start: float | None = None, end: float | None = None,
                   limit: int = 50, cursor: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
        end = end if end is not None else time.time() + 60
        start = start if start is not None else end - 90 * 86400
        where, args = ["ts >= ?", "ts < ?"], [start, end]
        if prompt:
            where.append("prompt = ?")
            args.append(prompt)
        if cursor:
            ts, cid = decode_cursor(cursor)
            where.append("(ts < ? OR (ts = ? AND id < ?))")
            args += [ts, ts, cid]
        n = max(1, min(limit, MAX_LIST))
        with self.store._read() as cur:
            cur.execute(self.q(f"SELECT * FROM release_audit WHERE {' AND '.join(where)} "
                               "ORDER BY ts DESC, id DESC LIMIT ?"), (*args, n + 1))
            rows = _dicts(cur)
        for r in rows:
            r["detail"] = _l(r["detail"])
            r["ts"] = _num(r["ts"])
            if r["gate_passed"] is not None:
                r["gate_passed"] = bool(r["gate_passed"])
        nxt = None
        if len(rows) > n:
            rows = rows[:n]
            nxt = encode_cursor(rows[-1]["ts"], rows[-1]["id"])
        return rows, nxt

    # ---- shadow ------------------------------------------------------------------------
    SHADOW_COLUMNS = ("id", "ts", "alias", "candidate", "target", "trace_id", "span_id", "prompt", "status", "error",
                      "latency_ms", "prod_latency_ms", "cost_usd", "prod_cost_usd", "input_tokens", "output_tokens",
                      "model", "prod_model", "exact_match", "json_equal", "similarity", "judge_score", "output",
                      "prod_output")

    def insert_shadow_results(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        cols = self.SHADOW_COLUMNS
        sql = self.q(f"INSERT INTO shadow_results ({', '.join(cols)}) VALUES {_in(len(cols))} "
                     "ON CONFLICT (id) DO NOTHING")
        with self.store._write() as cur:
            cur.executemany(sql, [tuple(r.get(c) for c in cols) for r in rows])

    def shadow_report(self, *, alias: str | None = None, start: float, end: float) -> list[dict[str, Any]]:
        """Per alias and candidate: counts, agreement, quality, latency and cost, side by side."""
        where, args = ["ts >= ?", "ts < ?"], [start, end]
        if alias:
            where.append("alias = ?")
            args.append(alias)
        sql = self.q(
            "SELECT alias, candidate, MAX(target) AS target, COUNT(*) AS n, "
            "SUM(CASE WHEN status = 'error' THEN 1 ELSE 0 END) AS errors, "
            "AVG(CASE WHEN status = 'ok' THEN exact_match END) AS exact_rate, "
            "AVG(CASE WHEN status = 'ok' THEN json_equal END) AS json_equal_rate, "
            "COUNT(CASE WHEN status = 'ok' THEN json_equal END) AS json_n, "
            "AVG(CASE WHEN status = 'ok' THEN similarity END) AS similarity, "
            "AVG(judge_score) AS judge_score, COUNT(judge_score) AS judge_n, "
            "AVG(CASE WHEN status = 'ok' THEN latency_ms END) AS latency_ms, "
            "AVG(CASE WHEN status = 'ok' THEN prod_latency_ms END) AS prod_latency_ms, "
            "SUM(cost_usd) AS cost_usd, COUNT(cost_usd) AS cost_n, "
            "SUM(CASE WHEN cost_usd IS NOT NULL THEN prod_cost_usd END) AS prod_cost_usd, "
            "COUNT(CASE WHEN cost_usd IS NOT NULL THEN prod_cost_usd END) AS prod_cost_n, "
            "MIN(ts) AS first_ts, MAX(ts) AS last_ts "
            f"FROM shadow_results WHERE {' AND '.join(where)} GROUP BY alias, candidate ORDER BY alias, candidate"
        )
        with self.store._read() as cur:
            cur.execute(sql, args)
            rows = _dicts(cur)
        for r in rows:
            for k in list(r):
                r[k] = _num(r[k])
        return rows

    def list_shadow_results(self, *, alias: str | None = None, trace_id: str | None = None,
                            start: float, end: float, limit: int = 50,
                            cursor: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
        where, args = ["ts >= ?", "ts < ?"], [start, end]
        for col, val in (("alias", alias), ("trace_id", trace_id)):
            if val:
                where.append(f"{col} = ?")
                args.append(val)
        if cursor:
            ts, cid = decode_cursor(cursor)
            where.append("(ts < ? OR (ts = ? AND id < ?))")
            args += [ts, ts, cid]
        n = max(1, min(limit, MAX_LIST))
        with self.store._read() as cur:
            cur.execute(self.q(f"SELECT * FROM shadow_results WHERE {' AND '.join(where)} "
                               "ORDER BY ts DESC, id DESC LIMIT ?"), (*args, n + 1))
            rows = _dicts(cur)
        for r in rows:
            for k in list(r):
                r[k] = _num(r[k])
        nxt = None
        if len(rows) > n:
            rows = rows[:n]
            nxt = encode_cursor(rows[-1]["ts"], rows[-1]["id"])
        return rows, nxt

    # ---- experiments -------------------------------------------------------------------
    EXPOSURE_COLUMNS = ("span_id", "experiment", "variant", "unit", "trace_id", "ts", "status", "latency_ms",
                        "cost_usd")

    def insert_exposures(self, rows: list[tuple]) -> None:
        if not rows:
            return
        cols = self.EXPOSURE_COLUMNS
        with self.store._write() as cur:
            cur.executemany(self.q(f"INSERT INTO experiment_exposures ({', '.join(cols)}) VALUES {_in(len(cols))} "
                                   "ON CONFLICT (span_id) DO NOTHING"), rows)

    def exposure_stats(self, experiment: str, start: float, end: float) -> list[dict[str, Any]]:
        with self.store._read() as cur:
            cur.execute(self.q(
                "SELECT variant, COUNT(*) AS n, SUM(CASE WHEN status = 'ok' THEN 1 ELSE 0 END) AS ok, "
                "COUNT(DISTINCT unit) AS units, AVG(latency_ms) AS latency_ms, SUM(cost_usd) AS cost_usd, "
                "COUNT(cost_usd) AS cost_n, MIN(ts) AS first_ts, MAX(ts) AS last_ts "
                "FROM experiment_exposures WHERE experiment = ? AND ts >= ? AND ts < ? GROUP BY variant"
            ), (experiment, start, end))
            rows = _dicts(cur)
        for r in rows:
            for k in list(r):
                r[k] = _num(r[k])
        return rows

    def evaluator_outcomes(self, experiment: str, start: float, end: float,
                           limit: int = 100_000) -> list[tuple[str, float | None, bool | None]]:
        """(variant, score, passed) of the evaluator spans in exposed traces."""
        with self.store._read() as cur:
            cur.execute(self.q(
                "SELECT e.variant, s.attributes FROM experiment_exposures e "
                "JOIN spans s ON s.trace_id = e.trace_id AND s.kind = 'evaluator' "
                "WHERE e.experiment = ? AND e.ts >= ? AND e.ts < ? LIMIT ?"
            ), (experiment, start, end, limit))
            raw = cur.fetchall()
        out = []
        for variant, attrs in raw:
            a = _l(attrs) or {}
            score = a.get("score")
            passed = a.get("passed")
            if passed is None and isinstance(a.get("decision"), str):
                passed = a["decision"] == "pass"
            out.append((variant, float(score) if isinstance(score, (int, float)) else None,
                        passed if isinstance(passed, bool) else None))
        return out

    def feedback_outcomes(self, experiment: str, start: float, end: float,
                          limit: int = 100_000) -> list[tuple[str, float]] | None:
        """(variant, score in 0..1) per feedback event on an exposed trace; None when the store has
        no ``feedback`` table (the caller reports "unavailable"). With the feedback feature's
        table (docs/feedback.md) a score is its ``score_norm``, else its sentiment (+1 -> 1,
        -1 -> 0; neutral events such as comments are left out); a simpler table with a
        ``score``/``value``/``rating``/``thumbs`` column is read as it is."""
        try:
            with self.store._read() as cur:
                cur.execute(self.q("SELECT * FROM feedback WHERE 1 = 0"))
                cols = [d[0] for d in cur.description]
        except Exception:
            return None
        if "trace_id" not in cols:
            return None
        if "sentiment" in cols and "score_norm" in cols:
            select = "f.score_norm, f.sentiment"
        else:
            col = next((c for c in ("score", "value", "rating", "thumbs") if c in cols), None)
            if col is None:
                return None
            select = f"f.{col}, NULL"
        try:
            with self.store._read() as cur:
                cur.execute(self.q(
                    f"SELECT e.variant, {select} FROM experiment_exposures e JOIN feedback f ON f.trace_id = e.trace_id "
                    "WHERE e.experiment = ? AND e.ts >= ? AND e.ts < ? LIMIT ?"
                ), (experiment, start, end, limit))
                raw = cur.fetchall()
        except Exception:
            return None
        out = []
        for variant, v, sentiment in raw:
            v = _num(v)
            if isinstance(v, bool):
                out.append((variant, 1.0 if v else 0.0))
            elif isinstance(v, (int, float)):
                out.append((variant, float(v)))
            elif isinstance(v, str) and v.lower() in ("up", "down", "positive", "negative", "true", "false"):
                out.append((variant, 1.0 if v.lower() in ("up", "positive", "true") else 0.0))
            elif sentiment is not None and int(sentiment) != 0:
                out.append((variant, 1.0 if int(sentiment) > 0 else 0.0))
        return out

    def success_counts(self, experiment: str, since: float) -> dict[str, tuple[int, int]]:
        """variant -> (successes, failures) since ``since`` (seeds Thompson sampling)."""
        with self.store._read() as cur:
            cur.execute(self.q(
                "SELECT variant, SUM(CASE WHEN status = 'ok' THEN 1 ELSE 0 END), COUNT(*) "
                "FROM experiment_exposures WHERE experiment = ? AND ts >= ? GROUP BY variant"
            ), (experiment, since))
            return {v: (int(ok or 0), int(n) - int(ok or 0)) for v, ok, n in cur.fetchall()}


def bad_since(value: str) -> InvalidRequest:
    return InvalidRequest(f"Invalid value for 'since': {value!r} (use e.g. 24h or 7d)", param="since")
