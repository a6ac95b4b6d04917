"""Versioned datasets of eval cases, stored beside the traces.

An item is ``{"id", "input", "expected", "metadata", "split", "trace_id"}`` where ``input``
is ``{"messages": [...]}`` (a conversation sent as-is) or ``{"variables": {...}}`` (filled
into a variant's prompt template). Versions are immutable: ``create`` publishes a new
version holding exactly the given items, ``add_items`` one holding the previous version's
items plus the new ones. Items are written and read in pages, so memory stays flat
whatever the size of the dataset.

Sources: :func:`read_rows` (JSONL or CSV files, each bad row reported with its line
number), :func:`items_from_traces` (hand-picked trace ids, or production traces matching
a filter).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import orjson

from ..errors import InvalidRequest, NotFound
from .schema import ensure_schema

SPLITS = ("train", "holdout")
PAGE = 500
RESERVED_COLUMNS = frozenset({"id", "input", "messages", "expected", "expected_json", "metadata", "split",
                              "trace_id"})

Row = tuple[Any, Any]  # (where: line number / index / trace id, raw item or an ItemError)


class ItemError(ValueError):
    """One row that cannot become an item; ``where`` is its line number (or index)."""

    def __init__(self, message: str, where: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.where = where


def _dumps(v: Any) -> str:
    return orjson.dumps(v, option=orjson.OPT_SORT_KEYS, default=str).decode()


def content_id(inp: Any, expected: Any) -> str:
    """A stable id for an item without one: a hash of its input and expected output."""
    return hashlib.sha256(_dumps([inp, expected]).encode()).hexdigest()[:16]


def holdout_of(item_id: str, fraction: float) -> bool:
    """Deterministic split by id: the same id lands in the same split in every version."""
    if fraction <= 0:
        return False
    h = int.from_bytes(hashlib.sha256(("split:" + item_id).encode()).digest()[:8], "big")
    return h / 2**64 < fraction


def _check_messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise ItemError("input.messages must be a non-empty list of messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ItemError(f"input.messages[{i}] must be an object with a 'role'")
        c = m.get("content")
        if c is not None and not isinstance(c, (str, list)):
            raise ItemError(f"input.messages[{i}].content must be a string or a list of parts")
    return messages


def normalize_input(raw: Any) -> dict[str, Any]:
    """``{"messages": [...]}`` or ``{"variables": {...}}`` from the accepted shorthands:
    a string (one user message), a list (messages), a dict with ``messages`` or
    ``variables``, or any other dict (its keys are the variables)."""
    if isinstance(raw, str):
        if not raw:
            raise ItemError("input is empty")
        return {"messages": [{"role": "user", "content": raw}]}
    if isinstance(raw, list):
        return {"messages": _check_messages(raw)}
    if isinstance(raw, dict):
        if "messages" in raw:
            if set(raw) - {"messages"}:
                raise ItemError("input: 'messages' cannot be combined with other keys")
            return {"messages": _check_messages(raw["messages"])}
        if "variables" in raw:
            if set(raw) - {"variables"}:
                raise ItemError("input: 'variables' cannot be combined with other keys")
            raw = raw["variables"]
            if not isinstance(raw, dict):
                raise ItemError("input.variables must be an object")
        if not raw:
            raise ItemError("input has no variables")
        return {"variables": {str(k): v for k, v in raw.items()}}
    raise ItemError("input must be a string, a list of messages or an object")


def normalize_item(raw: Any, *, holdout: float = 0.0) -> dict[str, Any]:
    """A stored item from a raw row; raises :class:`ItemError` naming what is wrong.

    Accepts ``input`` (see :func:`normalize_input`) or, at the top level, ``messages`` or
    ``variables``; optional ``id``, ``expected``, ``metadata`` (object), ``split``
    (train | holdout; else ``holdout`` decides from the id) and ``trace_id``."""
    if not isinstance(raw, dict):
        raise ItemError(f"a row must be a JSON object, not {type(raw).__name__}")
    unknown = set(raw) - {"id", "input", "messages", "variables", "expected", "metadata", "split", "trace_id"}
    if unknown:
        raise ItemError(f"unknown field(s) {', '.join(sorted(unknown))} (expected id, input, expected, "
                        "metadata, split, trace_id)")
    given = [k for k in ("input", "messages", "variables") if k in raw]
    if len(given) != 1:
        raise ItemError("a row needs exactly one of 'input', 'messages' or 'variables'")
    key = given[0]
    inp = normalize_input(raw[key] if key == "input" else {key: raw[key]})
    expected = raw.get("expected")
    metadata = raw.get("metadata")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise ItemError("metadata must be an object")
    item_id = raw.get("id")
    if item_id is None or item_id == "":
        item_id = content_id(inp, expected)
    elif isinstance(item_id, bool) or not isinstance(item_id, (str, int)):
        raise ItemError("id must be a string")
    item_id = str(item_id)
    if len(item_id) > 200:
        raise ItemError("id is longer than 200 characters")
    split = raw.get("split")
    if split in (None, ""):
        split = "holdout" if holdout_of(item_id, holdout) else "train"
    elif split not in SPLITS:
        raise ItemError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    trace_id = raw.get("trace_id")
    if trace_id is not None and not isinstance(trace_id, str):
        raise ItemError("trace_id must be a string")
    return {"id": item_id, "input": inp, "expected": expected, "metadata": metadata, "split": split,
            "trace_id": trace_id or None}


# ---- file sources ------------------------------------------------------------------------

def detect_format(path: str | Path, fmt: str | None = None) -> str:
    if fmt:
        if fmt not in ("jsonl", "csv", "tsv"):
            raise InvalidRequest(f"unknown dataset format {fmt!r} (use jsonl, csv or tsv)", param="format")
        return fmt
    suffix = Path(path).suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix in (".csv", ".tsv"):
        return suffix[1:]
    raise InvalidRequest(f"cannot tell the format of {path} from its extension; pass --format jsonl|csv",
                         param="format")


def read_rows(path: str | Path, fmt: str | None = None, *, raw: bool = False) -> Iterator[Row]:
    """(line number, raw row) per row of a JSONL or CSV file; a row that does not parse
    comes as (line number, ItemError). Streams: one row in memory at a time. CSV rows
    become items (columns -> variables, metadata...) unless ``raw`` (plain dicts)."""
    fmt = detect_format(path, fmt)
    try:
        fh = open(path, newline="" if fmt != "jsonl" else None, encoding="utf-8")
    except OSError as exc:
        raise InvalidRequest(f"cannot read {path}: {exc.strerror}") from None
    with fh:
        if fmt == "jsonl":
            yield from _jsonl_rows(fh)
        else:
            yield from _csv_rows(fh, "\t" if fmt == "tsv" else ",", raw)


def _jsonl_rows(fh: Any) -> Iterator[Row]:
    for n, line in enumerate(fh, start=1):
        if not line.strip():
            continue
        try:
            yield n, orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            yield n, ItemError(f"not valid JSON ({exc})", n)


def _csv_rows(fh: Any, delimiter: str, raw: bool = False) -> Iterator[Row]:
    reader = csv.DictReader(fh, delimiter=delimiter)
    if not reader.fieldnames:
        return
    start = reader.line_num + 1
    try:
        for row in reader:
            line = start
            start = reader.line_num + 1
            try:
                yield line, _csv_fields(row) if raw else _csv_item(row)
            except ItemError as exc:
                yield line, ItemError(exc.message, line)
    except csv.Error as exc:
        yield reader.line_num, ItemError(f"CSV error: {exc}", reader.line_num)


def _csv_fields(row: dict[str | None, Any]) -> dict[str, Any]:
    if None in row:
        raise ItemError("the row has more fields than the header")
    if any(v is None for v in row.values()):
        raise ItemError("the row has fewer fields than the header")
    return {k: v for k, v in row.items() if k is not None}


def _csv_item(row: dict[str | None, Any]) -> dict[str, Any]:
    row = _csv_fields(row)  # type: ignore[assignment]
    item: dict[str, Any] = {}
    metadata: dict[str, Any] = {}
    variables: dict[str, Any] = {}
    for k, v in row.items():
        assert k is not None
        if k in ("id", "split", "trace_id"):
            if v != "":
                item[k] = v
        elif k in ("input", "expected"):
            if v != "" or k == "input":
                item[k] = v
        elif k in ("messages", "expected_json", "metadata"):
            if v == "":
                continue
            try:
                parsed = json.loads(v)
            except ValueError:
                raise ItemError(f"column {k!r} is not valid JSON") from None
            if k == "metadata":
                if not isinstance(parsed, dict):
                    raise ItemError("column 'metadata' must hold a JSON object")
                metadata.update(parsed)
            else:
                item["messages" if k == "messages" else "expected"] = parsed
        elif k.startswith("metadata."):
            metadata[k[len("metadata."):]] = v
        else:
            variables[k] = v
    if variables:
        if "input" in item or "messages" in item:
            raise ItemError(f"columns {', '.join(sorted(variables))} are not known: with an 'input' or "
                            "'messages' column, other columns must be id, expected, expected_json, "
                            "metadata, metadata.KEY, split or trace_id")
        item["variables"] = variables
    if metadata:
        item["metadata"] = metadata
    return item


# ---- trace sources -----------------------------------------------------------------------

def _is_eval_traffic(span: dict[str, Any]) -> bool:
    attrs = span.get("attributes") or {}
    meta = attrs.get("metadata") or {}
    return "eval_run" in attrs or (isinstance(meta, dict) and "eval_run" in meta)


def _output_text(output: Any) -> str | None:
    if not isinstance(output, dict):
        return None
    choices = output.get("choices") or []
    if not choices or not isinstance(choices[0], dict):
        return None
    msg = choices[0].get("message") or {}
    content = msg.get("content")
    if isinstance(content, str):
        return content
    if msg.get("tool_calls"):
        return _dumps(msg["tool_calls"])
    return None


def item_from_trace(trace: dict[str, Any], *, expected: str = "output", include_evals: bool = False) -> dict[str, Any]:
    """A raw item from a recorded trace: its first llm call's messages as the input, its
    answer as the expected output (``expected="output"``) or none (``"none"``)."""
    spans = [s for s in trace.get("spans") or [] if s.get("kind") == "llm"]
    if not spans:
        raise ItemError("the trace has no llm call")
    span = spans[0]
    if not include_evals and _is_eval_traffic(span):
        raise ItemError("the trace was made by an eval run (pass --include-evals to keep it)")
    body = span.get("input")
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        raise ItemError("the trace has no recorded request body (recording.capture_bodies off?)")
    attrs = span.get("attributes") or {}
    params = {k: v for k, v in body.items() if k not in ("messages", "model", "stream", "stream_options", "metadata")}
    metadata: dict[str, Any] = {"source": "trace", "alias": span.get("alias"), "model": span.get("response_model") or span.get("model")}
    for k in ("user_id", "session_id"):
        if span.get(k):
            metadata[k] = span[k]
    if params:
        metadata["params"] = params
    if isinstance(attrs.get("metadata"), dict) and attrs["metadata"]:
        metadata["request_metadata"] = attrs["metadata"]
    item: dict[str, Any] = {"id": trace["trace_id"], "input": {"messages": body["messages"]},
                            "metadata": metadata, "trace_id": trace["trace_id"]}
    if expected == "output":
        if span.get("status") != "ok":
            raise ItemError(f"the call failed ({span.get('error') or 'error'}); it has no output to expect")
        text = _output_text(span.get("output"))
        if text is None:
            raise ItemError("the trace has no recorded answer to use as the expected output")
        item["expected"] = text
    return item


def items_from_traces(
    store: Any,
    *,
    trace_ids: Iterable[str] | None = None,
    filter: Any = None,
    limit: int | None = None,
    expected: str = "output",
    include_evals: bool = False,
) -> Iterator[Row]:
    """(trace id, raw item or ItemError) for hand-picked ``trace_ids``, else for the traces
    matching ``filter`` (a :class:`shipyard.store.TraceFilter`, newest first, paged)."""
    if expected not in ("output", "none"):
        raise InvalidRequest("expected must be 'output' or 'none'", param="expected")

    def one(trace_id: str) -> Row:
        trace = store.get_trace(trace_id)
        if trace is None:
            return trace_id, ItemError("no such trace", trace_id)
        try:
            return trace_id, item_from_trace(trace, expected=expected, include_evals=include_evals)
        except ItemError as exc:
            return trace_id, ItemError(exc.message, trace_id)

    if trace_ids is not None:
        for n, tid in enumerate(trace_ids):
            if limit is not None and n >= limit:
                return
            yield one(tid)
        return
    from ..store import TraceFilter

    f = filter or TraceFilter()
    produced = 0
    cursor = f.cursor
    while True:
        want = 500 if limit is None else min(500, limit - produced)
        if want <= 0:
            return
        page = dataclasses.replace(f, limit=want, cursor=cursor)
        rows, cursor = store.list_traces(page)
        for r in rows:
            where, item = one(r["trace_id"])
            if isinstance(item, ItemError) and "made by an eval run" in item.message:
                continue  # not production traffic: silently left out
            produced += 1
            yield where, item
        if not cursor or not rows:
            return


# ---- the store ---------------------------------------------------------------------------

@dataclass
class ImportReport:
    name: str
    version: int
    imported: int
    skipped: int = 0
    errors: list[tuple[Any, str]] = field(default_factory=list)  # the first MAX_ERRORS

    MAX_ERRORS = 1000


class Datasets:
    """Versioned datasets in a store (any SQL store: SQLite, PostgreSQL)."""

    def __init__(self, store: Any) -> None:
        if store is None:
            raise InvalidRequest("datasets need a store (the config has store: none)")
        self.store = store
        ensure_schema(store)
        self.q = store.dialect.q

    # ---- writing -----------------------------------------------------------------------
    def create(self, name: str, items: Iterable[Any], description: str | None = None, source: str | None = None,
               *, holdout: float = 0.0) -> int:
        """Publish a new version of ``name`` holding exactly ``items``; returns its number
        (1 for a new dataset). An invalid item raises InvalidRequest naming it (nothing is
        published)."""
        return self.publish(name, ((i, it) for i, it in enumerate(items, start=1)), description=description,
                            source=source, holdout=holdout, append=False).version

    def add_items(self, name: str, items: Iterable[Any], *, holdout: float = 0.0) -> int:
        """Publish a new version: the latest version's items plus ``items``."""
        self.get(name)
        return self.publish(name, ((i, it) for i, it in enumerate(items, start=1)), holdout=holdout,
                            append=True).version

    def publish(
        self,
        name: str,
        rows: Iterable[Row],
        *,
        description: str | None = None,
        source: str | None = None,
        holdout: float = 0.0,
        append: bool = False,
        on_error: Callable[[Any, str], None] | None = None,
        allow_empty: bool = True,
    ) -> ImportReport:
        """Write ``rows`` ((where, raw item or ItemError)) as a new version. A bad row
        calls ``on_error(where, message)``: it returns to skip the row or raises to abort
        (the default raises InvalidRequest). Duplicate ids are bad rows too."""
        _check_name(name)
        if not 0 <= holdout < 1:
            raise InvalidRequest("holdout must be a fraction in [0, 1)", param="holdout")
        base: list[int] = []
        prev: dict[str, Any] = {"item_count": 0, "holdout_count": 0}
        if append:
            prev = self._version_row(name, None)
            base = prev["segments"]
        report = ImportReport(name, 0, 0)

        def bad(where: Any, message: str) -> None:
            report.skipped += 1
            if len(report.errors) < ImportReport.MAX_ERRORS:
                report.errors.append((where, message))
            if on_error is None:
                label = f"line {where}" if isinstance(where, int) else str(where)
                raise InvalidRequest(f"dataset {name!r}: {label}: {message}")
            on_error(where, message)

        segment = secrets.randbits(62)
        seq = 0
        holdouts = 0
        batch: list[tuple[Any, dict[str, Any]]] = []

        def flush() -> None:
            nonlocal seq, holdouts
            ids = [it["id"] for _, it in batch]
            dupes = self._existing_ids(base + [segment], ids)
            seen: set[str] = set()
            rows_out = []
            for where, it in batch:
                if it["id"] in dupes or it["id"] in seen:
                    bad(where, f"duplicate item id {it['id']!r}")
                    continue
                seen.add(it["id"])
                seq += 1
                holdouts += it["split"] == "holdout"
                rows_out.append((segment, seq, it["id"], _dumps(it["input"]),
                                 None if it["expected"] is None else _dumps(it["expected"]),
                                 _dumps(it["metadata"]) if it["metadata"] else None, it["split"], it["trace_id"]))
            if rows_out:
                with self.store._write() as cur:
                    cur.executemany(self.q(
                        "INSERT INTO dataset_items (segment_id, seq, item_id, input, expected, metadata, split, "
                        "trace_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"), rows_out)
            batch.clear()

        try:
            for where, raw in rows:
                if isinstance(raw, ItemError):
                    bad(where if raw.where is None else raw.where, raw.message)
                    continue
                try:
                    item = normalize_item(raw, holdout=holdout)
                except ItemError as exc:
                    bad(where, exc.message)
                    continue
                batch.append((where, item))
                if len(batch) >= PAGE:
                    flush()
            if batch:
                flush()
        except BaseException:
            self._drop_segment(segment)
            raise
        if not seq and not allow_empty:
            raise InvalidRequest(f"dataset {name!r}: no valid items ({report.skipped} rejected); nothing published")
        segments = base + ([segment] if seq else [])
        report.imported = seq
        report.version = self._publish_version(name, segments, prev["item_count"] + seq,
                                               prev["holdout_count"] + holdouts,
                                               description, source)
        return report

    def _existing_ids(self, segments: list[int], ids: list[str]) -> set[str]:
        if not segments or not ids:
            return set()
        found: set[str] = set()
        with self.store._read() as cur:
            for k in range(0, len(segments), 50):
                segs = segments[k:k + 50]
                cur.execute(self.q(
                    f"SELECT item_id FROM dataset_items WHERE segment_id IN ({', '.join('?' * len(segs))}) "
                    f"AND item_id IN ({', '.join('?' * len(ids))})"), (*segs, *ids))
                found.update(r[0] for r in cur.fetchall())
        return found

    def _drop_segment(self, segment: int) -> None:
        try:
            with self.store._write() as cur:
                cur.execute(self.q("DELETE FROM dataset_items WHERE segment_id = ?"), (segment,))
        except Exception:  # pragma: no cover - best effort: an orphan segment is invisible anyway
            pass

    def _publish_version(self, name: str, segments: list[int], count: int, holdout: int,
                         description: str | None, source: str | None) -> int:
        now = time.time()
        for attempt in range(5):
            try:
                with self.store._write() as cur:
                    cur.execute(self.q("INSERT INTO datasets (name, description, created_at) VALUES (?, ?, ?) "
                                       "ON CONFLICT (name) DO NOTHING"), (name, description, now))
                    if description is not None:
                        cur.execute(self.q("UPDATE datasets SET description = ? WHERE name = ?"), (description, name))
                    cur.execute(self.q("SELECT MAX(version) FROM dataset_versions WHERE name = ?"), (name,))
                    version = int(cur.fetchone()[0] or 0) + 1
                    cur.execute(self.q(
                        "INSERT INTO dataset_versions (name, version, segments, item_count, holdout_count, "
                        "description, source, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"),
                        (name, version, json.dumps(segments), count, holdout, description, source, now))
                return version
            except Exception as exc:  # a concurrent publisher took the number: try the next one
                if attempt == 4 or "unique" not in str(exc).lower() and "duplicate" not in str(exc).lower():
                    raise
        raise AssertionError("unreachable")

    # ---- reading -----------------------------------------------------------------------
    def _version_row(self, name: str, version: int | None) -> dict[str, Any]:
        cols = "name, version, segments, item_count, holdout_count, description, source, created_at"
        with self.store._read() as cur:
            if version is None:
                cur.execute(self.q(f"SELECT {cols} FROM dataset_versions WHERE name = ? "
                                   "ORDER BY version DESC LIMIT 1"), (name,))
            else:
                cur.execute(self.q(f"SELECT {cols} FROM dataset_versions WHERE name = ? AND version = ?"),
                            (name, int(version)))
            row = cur.fetchone()
            if row is None and version is not None:
                cur.execute(self.q("SELECT MAX(version) FROM dataset_versions WHERE name = ?"), (name,))
                latest = cur.fetchone()[0]
        if row is None:
            if version is None or latest is None:
                raise NotFound(f"dataset {name!r} not found", param="dataset", code="dataset_not_found")
            raise NotFound(f"dataset {name!r} has no version {version} (latest is {latest})", param="version",
                           code="dataset_version_not_found")
        d = dict(zip([c.strip() for c in cols.split(",")], row))
        d["segments"] = json.loads(d["segments"])
        return d

    def get(self, name: str, version: int | None = None) -> dict[str, Any]:
        """Metadata of a version (the latest by default)."""
        d = self._version_row(name, version)
        d.pop("segments")
        d["train_count"] = d["item_count"] - d["holdout_count"]
        with self.store._read() as cur:
            cur.execute(self.q("SELECT COUNT(*), MAX(version) FROM dataset_versions WHERE name = ?"), (name,))
            n, latest = cur.fetchone()
            cur.execute(self.q("SELECT description FROM datasets WHERE name = ?"), (name,))
            row = cur.fetchone()
        d["versions"] = int(n)
        d["latest_version"] = int(latest)
        d["dataset_description"] = row[0] if row else None
        return d

    def versions(self, name: str) -> list[dict[str, Any]]:
        with self.store._read() as cur:
            cur.execute(self.q(
                "SELECT name, version, item_count, holdout_count, description, source, created_at "
                "FROM dataset_versions WHERE name = ? ORDER BY version"), (name,))
            cols = [d[0] for d in cur.description]
            rows = [dict(zip(cols, r)) for r in cur.fetchall()]
        if not rows:
            raise NotFound(f"dataset {name!r} not found", param="dataset", code="dataset_not_found")
        return rows

    def list(self) -> list[dict[str, Any]]:
        """Every dataset: name, description, latest version, its item count, created_at."""
        with self.store._read() as cur:
            cur.execute(
                "SELECT d.name, d.description, v.version, v.item_count, v.holdout_count, v.created_at "
                "FROM datasets d JOIN dataset_versions v ON v.name = d.name AND v.version = "
                "(SELECT MAX(version) FROM dataset_versions x WHERE x.name = d.name) ORDER BY d.name")
            rows = cur.fetchall()
        return [{"name": n, "description": desc, "version": v, "latest_version": v, "item_count": c,
                 "holdout_count": h, "created_at": t} for n, desc, v, c, h, t in rows]

    def count(self, name: str, version: int | None = None, split: str | None = None) -> int:
        d = self._version_row(name, version)
        if split is None:
            return int(d["item_count"])
        _check_split(split)
        return int(d["holdout_count"] if split == "holdout" else d["item_count"] - d["holdout_count"])

    def iter_items(self, name: str, version: int | None = None, split: str | None = None) -> Iterator[dict[str, Any]]:
        """The items of a version in order, read from the store a page at a time."""
        if split is not None:
            _check_split(split)
        segments = self._version_row(name, version)["segments"]
        return self._iterate(segments, split)

    def get_items(self, name: str, version: int | None, ids: list[str]) -> dict[str, dict[str, Any]]:
        """Items of a version by id (ids not in it are left out)."""
        segments = self._version_row(name, version)["segments"]
        out: dict[str, dict[str, Any]] = {}
        if not ids or not segments:
            return out
        with self.store._read() as cur:
            for k in range(0, len(ids), 400):
                chunk = ids[k:k + 400]
                cur.execute(self.q(
                    "SELECT item_id, input, expected, metadata, split, trace_id FROM dataset_items WHERE segment_id IN "
                    f"({', '.join('?' * len(segments))}) AND item_id IN ({', '.join('?' * len(chunk))})"),
                    (*segments, *chunk))
                for item_id, inp, exp, meta, sp, tid in cur.fetchall():
                    out[item_id] = {"id": item_id, "input": orjson.loads(inp),
                                    "expected": None if exp is None else orjson.loads(exp),
                                    "metadata": orjson.loads(meta) if meta else {}, "split": sp, "trace_id": tid}
        return out

    def _iterate(self, segments: list[int], split: str | None) -> Iterator[dict[str, Any]]:
        cond = " AND split = ?" if split else ""
        sql = self.q("SELECT seq, item_id, input, expected, metadata, split, trace_id FROM dataset_items "
                     f"WHERE segment_id = ? AND seq > ?{cond} ORDER BY seq LIMIT ?")
        for seg in segments:
            last = 0
            while True:
                args: tuple = (seg, last, split, PAGE) if split else (seg, last, PAGE)
                with self.store._read() as cur:  # one page per read: never held across a yield
                    cur.execute(sql, args)
                    page = cur.fetchall()
                for _seq, item_id, inp, exp, meta, sp, tid in page:
                    yield {"id": item_id, "input": orjson.loads(inp),
                           "expected": None if exp is None else orjson.loads(exp),
                           "metadata": orjson.loads(meta) if meta else {}, "split": sp, "trace_id": tid}
                if len(page) < PAGE:
                    break
                last = page[-1][0]


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise InvalidRequest("a dataset name must be a non-empty string of at most 200 characters", param="name")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise InvalidRequest(f"split must be one of {', '.join(SPLITS)}, not {split!r}", param="split")


def import_file(
    datasets: Datasets,
    name: str,
    path: str | Path,
    *,
    fmt: str | None = None,
    on_error: str = "skip",
    append: bool = False,
    description: str | None = None,
    holdout: float = 0.0,
) -> ImportReport:
    """Import a JSONL/CSV file as a new version. ``on_error="skip"`` skips bad rows (each
    reported with its line number); ``"fail"`` stops at the first and publishes nothing."""
    if on_error not in ("skip", "fail"):
        raise InvalidRequest("on_error must be 'skip' or 'fail'", param="on_error")

    def handle(where: Any, message: str) -> None:
        if on_error == "fail":
            raise InvalidRequest(f"{path}: line {where}: {message} (nothing imported; use --on-error skip to "
                                 "skip bad rows)")

    return datasets.publish(name, read_rows(path, fmt), description=description, source=f"file:{Path(path).name}",
                            holdout=holdout, append=append, on_error=handle, allow_empty=False)
