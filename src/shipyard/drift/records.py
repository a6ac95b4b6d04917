"""Reading the two sides of a comparison and reducing them to descriptor columns.

A side is a time window of production llm spans or an eval dataset. Both are read as a
stream (spans page by page on an index, dataset items as the dataset yields them), so
memory grows with the number of records only by a few numbers each; texts are kept only
for a bounded, uniform reservoir sample used by the semantic analysis.

Spans written by the nondeterminism probe (``attributes.metadata.drift_probe``) and by eval
runs (``eval_run``) are never part of a window: they are not production traffic.
"""

from __future__ import annotations

import random
from array import array
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import orjson

from ..errors import NotFound
from .descriptors import input_text, output_parts, response_schema, text_descriptors
from .spec import Spec

PAGE = 2000
PROBE_MARK = "drift_probe"
EVAL_MARK = "eval_run"  # set by shipyard.evals on the calls of an eval run
SHAPE_MIN_JSON_SHARE = 0.5  # the reference defines a JSON shape when at least this share is JSON objects
SHAPE_KEY_SHARE = 0.9  # keys present in at least this share of those objects are required


@dataclass(slots=True)
class Item:
    """One record of either side, in one shape."""

    id: str
    input: Any
    output: Any
    trace_id: str | None = None
    latency_ms: float | None = None
    cost_usd: float | None = None
    time: float | None = None


@dataclass(slots=True)
class Sampled:
    id: str
    trace_id: str | None
    input: str | None
    output: str | None


class Columns:
    """Descriptor values of one side (input / output / call) of one window."""

    def __init__(self) -> None:
        self.num: dict[str, array] = {}
        self.cat: dict[str, list[str]] = {}

    def add_num(self, name: str, value: float | None) -> None:
        if value is not None:
            col = self.num.get(name)
            if col is None:
                col = self.num[name] = array("d")
            col.append(float(value))

    def add_cat(self, name: str, value: Any) -> None:
        if value is not None:
            col = self.cat.get(name)
            if col is None:
                col = self.cat[name] = []
            col.append(("true" if value else "false") if isinstance(value, bool) else str(value))


class Shape:
    """What a conforming output looks like: an explicit JSON schema from the request, or
    the shape the reference's outputs share (a JSON object with their common keys)."""

    def __init__(self, required: frozenset[str] | None) -> None:
        self.required = required
        self._validators: dict[str, Any] = {}

    @classmethod
    def infer(cls, shapes: Iterable[Any]) -> "Shape":
        n = objects = 0
        keys: Counter[str] = Counter()
        for s in shapes:
            if s is None or isinstance(s, bool):  # no output / explicit-schema verdict
                continue
            n += 1
            if isinstance(s, frozenset):
                objects += 1
                keys.update(s)
        if not n or objects / n < SHAPE_MIN_JSON_SHARE:
            return cls(None)
        return cls(frozenset(k for k, c in keys.items() if c / objects >= SHAPE_KEY_SHARE))

    def describe(self) -> str | None:
        if self.required is None:
            return None
        keys = ", ".join(sorted(self.required)) or "no common keys"
        return f"a JSON object with the reference's common keys ({keys})"

    def explicit(self, schema: dict[str, Any], value: Any) -> bool:
        key = orjson.dumps(schema, option=orjson.OPT_SORT_KEYS).decode()
        v = self._validators.get(key)
        if v is None:
            import jsonschema

            try:
                cls = jsonschema.validators.validator_for(schema)
                v = cls(schema)
            except Exception:  # an invalid schema validates nothing
                v = False
            self._validators[key] = v
        if v is False:
            return False
        return bool(v.is_valid(value))

    def adheres(self, shape: Any) -> bool | None:
        """Verdict for one record's output shape (see ``shape_of``); None: not applicable."""
        if shape is None:
            return None
        if isinstance(shape, bool):
            return shape
        if self.required is None:
            return None
        return isinstance(shape, frozenset) and self.required <= shape


def shape_of(parsed: Any, schema: dict[str, Any] | None, checker: Shape) -> Any:
    """A compact record of an output for the schema check: a bool when the request gave a
    schema (validated now), the key set of a JSON object, or "" for anything else."""
    if schema is not None:
        return checker.explicit(schema, parsed) if parsed is not None else False
    if isinstance(parsed, dict):
        return frozenset(parsed)
    return ""


class Collected:
    """Everything the analysis needs from one side."""

    def __init__(self, spec: Spec, max_semantic: int, seed: int) -> None:
        self.spec = spec
        self.n = 0
        self.n_outputs = 0
        self.input = Columns()
        self.output = Columns()
        self.call = Columns()
        self.shapes: list[Any] = []  # per record with an output (reference only, for inference)
        self.sample: list[Sampled] = []
        self.max_semantic = max_semantic
        self._rng = random.Random(seed)
        self.trace_ids = 0

    def reservoir(self, s: Sampled) -> None:
        """Algorithm R: a uniform sample of at most ``max_semantic`` records."""
        if len(self.sample) < self.max_semantic:
            self.sample.append(s)
            return
        j = self._rng.randrange(self.n)
        if j < self.max_semantic:
            self.sample[j] = s

    def add(self, item: Item, checker: Shape | None, keep_shapes: bool) -> None:
        self.n += 1
        in_text = input_text(item.input)
        if in_text is not None:
            d = text_descriptors(in_text)
            for k in ("chars", "tokens", "non_dictionary_share"):
                self.input.add_num(k, d[k])
            for k in ("json_valid", "casing", "language", "empty"):
                self.input.add_cat(k, d[k])
        out = output_parts(item.output)
        out_text = None
        if out is not None:
            self.n_outputs += 1
            out_text, tools, refused = out
            d = text_descriptors(out_text, output=True)
            for k in ("chars", "tokens", "non_dictionary_share"):
                self.output.add_num(k, d[k])
            for k in ("json_valid", "casing", "language"):
                self.output.add_cat(k, d[k])
            self.output.add_cat("empty", d["empty"] and not tools)
            self.output.add_cat("refusal", refused or d["refusal"])
            self.output.add_cat("tool_call", tools)
            if not tools:
                shape = shape_of(d["json"], response_schema(item.input), checker or Shape(None))
                if keep_shapes:
                    self.shapes.append(shape)
                elif checker is not None:
                    self.output.add_cat("schema_adherence", checker.adheres(shape))
        self.call.add_num("latency_ms", item.latency_ms)
        self.call.add_num("cost_usd", item.cost_usd)
        if item.trace_id:
            self.trace_ids += 1
        if self.max_semantic > 0 and (in_text or out_text):
            self.reservoir(Sampled(item.id, item.trace_id, in_text, out_text))

    def finish_shapes(self, checker: Shape) -> None:
        for shape in self.shapes:
            self.output.add_cat("schema_adherence", checker.adheres(shape))
        self.shapes = []


# ---- sources ---------------------------------------------------------------------------
def _loads(text: Any) -> Any:
    if text is None:
        return None
    if isinstance(text, (bytes, str)):
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            return None
    return text


def window_items(store: Any, start: float, end: float, alias: str | None = None,
                 limit: int | None = None) -> Iterator[Item]:
    """The llm spans that started in [start, end), oldest first, paged on (start_time,
    span_id); probe spans left out. At most ``limit`` (the newest are dropped)."""
    q = store.dialect.q
    base = ("SELECT span_id, trace_id, start_time, duration_ms, cost_usd, status, attributes, input, output "
            "FROM spans WHERE kind = 'llm' AND start_time >= ? AND start_time < ?")
    if alias is not None:
        base += " AND alias = ?"
    after: tuple[float, str] | None = None
    seen = 0
    while True:
        args: list[Any] = [start, end]
        if alias is not None:
            args.append(alias)
        sql = base
        if after is not None:
            sql += " AND (start_time > ? OR (start_time = ? AND span_id > ?))"
            args += [after[0], after[0], after[1]]
        sql += " ORDER BY start_time, span_id LIMIT ?"
        args.append(PAGE)
        with store._read() as cur:
            cur.execute(q(sql), args)
            rows = cur.fetchall()
        for span_id, trace_id, ts, dur, cost, status, attrs, inp, out in rows:
            if attrs and (PROBE_MARK in attrs or EVAL_MARK in attrs) and _excluded(attrs):
                continue
            if limit is not None and seen >= limit:
                return
            seen += 1
            yield Item(id=span_id, trace_id=trace_id, input=_loads(inp),
                       output=_loads(out) if status == "ok" else None,
                       latency_ms=None if dur is None else float(dur),
                       cost_usd=None if cost is None else float(cost), time=float(ts))
        if len(rows) < PAGE:
            return
        after = (rows[-1][2], rows[-1][0])


def _excluded(attrs: str) -> bool:
    """Probe re-runs and eval-run traffic are not production."""
    a = _loads(attrs)
    if not isinstance(a, dict):
        return False
    meta = a.get("metadata")
    meta = meta if isinstance(meta, dict) else {}
    return bool(meta.get(PROBE_MARK)) or EVAL_MARK in a or EVAL_MARK in meta


def default_datasets(store: Any) -> Any:
    try:
        from ..evals.datasets import Datasets
    except ImportError:
        raise NotFound("Eval datasets are not available in this build of shipyard "
                       "(shipyard.evals.datasets is missing), so a dataset cannot be the reference; "
                       "use a window, e.g. --reference window:30d..7d", param="reference") from None
    return Datasets(store)


def _metric(meta: Any, *keys: str) -> float | None:
    if isinstance(meta, dict):
        for k in keys:
            v = meta.get(k)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                return float(v)
    return None


def dataset_items(store: Any, spec: Spec, datasets: Any) -> Iterator[Item]:
    """The items of an eval dataset. An item's ``expected`` stands for its output; its
    latency and cost come from its metadata (latency_ms, cost_usd) or, when it was made
    from a trace, from that trace's llm span."""
    it = datasets.iter_items(spec.name, version=spec.version, split=spec.split)
    buf: list[Item] = []
    for raw in it:
        meta = raw.get("metadata") or {}
        item = Item(id=str(raw.get("id")), input=raw.get("input"), output=raw.get("expected"),
                    trace_id=raw.get("trace_id"), latency_ms=_metric(meta, "latency_ms", "duration_ms"),
                    cost_usd=_metric(meta, "cost_usd"))
        buf.append(item)
        if len(buf) >= 500:
            yield from _with_trace_metrics(store, buf)
            buf = []
    if buf:
        yield from _with_trace_metrics(store, buf)


def _with_trace_metrics(store: Any, items: list[Item]) -> list[Item]:
    want = sorted({i.trace_id for i in items if i.trace_id and (i.latency_ms is None or i.cost_usd is None)})
    if want and store is not None and hasattr(store, "_read"):
        marks = ", ".join("?" * len(want))
        with store._read() as cur:
            cur.execute(store.dialect.q(
                f"SELECT trace_id, duration_ms, cost_usd FROM spans WHERE kind = 'llm' AND trace_id IN ({marks}) "
                "ORDER BY start_time"), want)
            found: dict[str, tuple[Any, Any]] = {}
            for tid, dur, cost in cur.fetchall():
                found.setdefault(tid, (dur, cost))
        for i in items:
            if i.trace_id in found:
                dur, cost = found[i.trace_id]
                if i.latency_ms is None and dur is not None:
                    i.latency_ms = float(dur)
                if i.cost_usd is None and cost is not None:
                    i.cost_usd = float(cost)
    return items


def items_for(store: Any, spec: Spec, datasets: Any | Callable[[Any], Any] | None = None,
              alias: str | None = None, limit: int | None = None) -> Iterator[Item]:
    if spec.kind == "dataset":
        if datasets is None:
            ds = default_datasets(store)
        elif isinstance(datasets, type) or not hasattr(datasets, "iter_items"):
            ds = datasets(store)  # a class or factory taking the store
        else:
            ds = datasets
        n = 0
        for item in dataset_items(store, spec, ds):
            if limit is not None and n >= limit:
                return
            n += 1
            yield item
        return
    assert spec.start is not None and spec.end is not None
    yield from window_items(store, spec.start, spec.end, alias=alias, limit=limit)


def collect(store: Any, spec: Spec, *, checker: Shape | None, keep_shapes: bool, max_semantic: int,
            seed: int = 0, datasets: Any = None, alias: str | None = None,
            limit: int | None = None) -> Collected:
    c = Collected(spec, max_semantic, seed)
    for item in items_for(store, spec, datasets, alias=alias if spec.kind == "window" else None, limit=limit):
        c.add(item, checker, keep_shapes)
    return c
