"""``shipyard datasets ...`` and ``shipyard eval ...`` (registered by shipyard.cli).

Exit codes: 0 success; 1 the CI gate failed (``--fail-under``, ``--fail-on-regression``,
``--max-error-rate``); 2 an error (bad spec, unknown dataset, ...); 130 interrupted (the run
can be resumed with ``--resume RUN_ID``).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import sys
from pathlib import Path
from typing import Any, Callable

import orjson

from ..cli_output import Column, fail, fmt, fmt_time, print_json, print_table, warn, write_json

EXIT_GATE = 1
EXIT_INTERRUPTED = 130

DATASET_COLUMNS = (Column("NAME", 30, clip=True), Column("VERSION", 7, ">"), Column("ITEMS", 8, ">"),
                   Column("HOLDOUT", 7, ">"), Column("CREATED (UTC)", 19), Column("DESCRIPTION"))
RUN_COLUMNS = (Column("RUN ID", 40, clip=True), Column("KIND", 7), Column("STATUS", 11), Column("STARTED (UTC)", 19),
               Column("DATASET", 20, clip=True), Column("DONE", 13, ">"))
JUDGE_COLUMNS = (Column("CRITERION", 20, clip=True), Column("JUDGE", 24, clip=True), Column("VER", 3, ">"),
                 Column("CREATED (UTC)", 19), Column("ALIGNMENT", 9, ">"), Column("KAPPA", 6, ">"), Column("N", 5, ">"),
                 Column("SELECTED"))


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    return Console(file=stream, width=None if stream.isatty() else 160, highlight=False)


def _open_store(args: argparse.Namespace) -> Any:
    """--store URL, else the EVAL.yaml's store (--spec / positional), else the config's."""
    from ..cli import _store_url
    from ..errors import ConfigError
    from ..store import open_store

    url = getattr(args, "store", None)
    spec = getattr(args, "spec", None)
    if url is None and spec:
        from .spec import load_spec

        loaded = load_spec(spec)
        url = loaded.spec.store
        if url is None and loaded.spec.config:
            url = _store_url(loaded.config_path())
    if url is None:
        import os

        url = _store_url(getattr(args, "config", None) or os.environ.get("SHIPYARD_CONFIG") or None)
    store = open_store(url)
    if store is None:
        raise ConfigError("no store is configured (store: none)")
    return store


# ---- datasets -----------------------------------------------------------------------------------

def cmd_datasets_import(args: argparse.Namespace) -> int:
    from .datasets import Datasets, import_file

    store = _open_store(args)
    try:
        ds = Datasets(store)
        rep = import_file(ds, args.name, args.file, fmt=args.format, on_error=args.on_error, append=args.append,
                          description=args.description, holdout=args.holdout)
        errors = rep.errors
        for where, msg in errors[:50]:
            warn(f"{args.file}: line {where}: {msg} (skipped)")
        if rep.skipped > 50:
            warn(f"… {rep.skipped - 50} more bad rows skipped")
        _print_version(ds, args.name, rep, "imported")
        return 0
    finally:
        store.close()


def cmd_datasets_from_traces(args: argparse.Namespace) -> int:
    from ..store import TraceFilter
    from .datasets import Datasets, items_from_traces

    store = _open_store(args)
    try:
        ds = Datasets(store)
        ids: list[str] | None = list(args.trace_id or []) or None
        if args.trace_ids_file:
            ids = (ids or []) + [ln.strip() for ln in Path(args.trace_ids_file).read_text().splitlines() if ln.strip()]
        f = TraceFilter(start=args.since, end=args.until, alias=args.alias, model=args.model, user_id=args.user,
                        session_id=args.session, status=args.status, min_cost=args.min_cost, max_cost=args.max_cost,
                        min_latency_ms=args.min_latency_ms, max_latency_ms=args.max_latency_ms, q=args.q)
        rows = items_from_traces(store, trace_ids=ids, filter=f, limit=args.limit, expected=args.expected,
                                 include_evals=args.include_evals)
        skipped: list[tuple[Any, str]] = []

        def on_error(where: Any, msg: str) -> None:
            if args.on_error == "fail":
                from ..errors import InvalidRequest

                raise InvalidRequest(f"trace {where}: {msg} (nothing imported)")
            skipped.append((where, msg))

        source = "traces:" + (",".join(ids[:5]) + ("…" if len(ids) > 5 else "") if ids else _filter_text(args))
        try:
            rep = ds.publish(args.name, rows, description=args.description, source=source, holdout=args.holdout,
                             append=args.append, on_error=on_error, allow_empty=False)
        finally:
            for where, msg in skipped[:50]:
                warn(f"trace {where}: {msg} (skipped)")
        _print_version(ds, args.name, rep, "from traces")
        return 0
    finally:
        store.close()


def _print_version(ds: Any, name: str, rep: Any, how: str) -> None:
    """What a new dataset version holds, after an import."""
    meta = ds.get(name, rep.version)
    print(f"dataset {name} v{rep.version}: {rep.imported} items {how}, {rep.skipped} skipped "
          f"({meta['item_count']} items: {meta['train_count']} train, {meta['holdout_count']} holdout)")


def _filter_text(args: argparse.Namespace) -> str:
    parts = []
    for k in ("alias", "model", "user", "session", "status", "q", "min_cost", "max_cost", "min_latency_ms",
              "max_latency_ms", "limit"):
        v = getattr(args, k, None)
        if v is not None:
            parts.append(f"{k}={v}")
    return " ".join(parts) or "all"


def cmd_datasets_list(args: argparse.Namespace) -> int:
    from .datasets import Datasets

    store = _open_store(args)
    try:
        rows = Datasets(store).list()
    finally:
        store.close()
    if args.json:
        print_json(rows)
        return 0
    print_table(DATASET_COLUMNS, [
        [r["name"], r["version"], r["item_count"], r["holdout_count"], fmt_time(r["created_at"]),
         r["description"] or ""]
        for r in rows], empty="(no datasets: shipyard datasets import NAME FILE.jsonl, "
                              "or shipyard datasets from-traces NAME)")
    return 0


def cmd_datasets_show(args: argparse.Namespace) -> int:
    from .datasets import Datasets

    store = _open_store(args)
    try:
        ds = Datasets(store)
        meta = ds.get(args.name, args.version)
        items = []
        for i, item in enumerate(ds.iter_items(args.name, args.version, args.split)):
            if i >= args.head:
                break
            items.append(item)
        versions = ds.versions(args.name) if args.version is None else []
    finally:
        store.close()
    if args.json:
        print_json({"dataset": meta, "items": items})
        return 0
    print(f"dataset {meta['name']} v{meta['version']} (latest v{meta['latest_version']}): {meta['item_count']} items "
          f"({meta['train_count']} train, {meta['holdout_count']} holdout); source {meta['source'] or '-'}; "
          f"created {fmt_time(meta['created_at'])}")
    for v in versions:
        print(f"  v{v['version']}: {v['item_count']} items, {fmt_time(v['created_at'])}, {v['source'] or ''}")
    for item in items:
        inp = item["input"]
        text = orjson.dumps(inp.get("variables") if "variables" in inp else inp["messages"][-1]).decode()
        exp = "" if item["expected"] is None else orjson.dumps(item["expected"]).decode()
        print(f"- {item['id']} [{item['split']}] input={text[:100]} expected={exp[:60]}")
    return 0


def cmd_datasets_export(args: argparse.Namespace) -> int:
    from .datasets import Datasets

    store = _open_store(args)
    try:
        ds = Datasets(store)
        out = open(args.out, "wb") if args.out else sys.stdout.buffer
        n = 0
        try:
            for item in ds.iter_items(args.name, args.version, args.split):
                out.write(orjson.dumps(item) + b"\n")
                n += 1
        finally:
            if args.out:
                out.close()
    finally:
        store.close()
    if args.out:
        print(f"{n} items written to {args.out}", file=sys.stderr)
    return 0


# ---- eval -----------------------------------------------------------------------------------

def _gate_from(args: argparse.Namespace, spec: Any = None) -> Any:
    from .report import Gate

    g = spec.gate if spec is not None else None
    return Gate(
        fail_under=args.fail_under if args.fail_under is not None else (g.fail_under if g else None),
        max_error_rate=args.max_error_rate if args.max_error_rate is not None else (g.max_error_rate if g else None),
        fail_on_regression=args.fail_on_regression or bool(g and g.fail_on_regression),
        regression_tolerance=args.regression_tolerance if args.regression_tolerance is not None else (
            g.regression_tolerance if g else 0.0),
    )


def _gate_active(gate: Any, baseline: str | None) -> bool:
    return gate.fail_under is not None or gate.max_error_rate is not None or (gate.fail_on_regression and bool(baseline))


def report_run(store: Any, run_id: str, *, baseline: str | None, gate: Any, html: str | None, json_out: str | None,
               ci: str = "t", migration_pairs: list[tuple[str, str]] | None = None, quiet: bool = False,
               cases_csv: str | None = None) -> int:
    """Print the report of a run, write HTML/JSON, apply the gate; the exit code."""
    from .html_report import render_html
    from .report import TerminalReport, as_json, baseline_diffs, iter_case_pairs, migration
    from .results import EvalStore

    evs = EvalStore(store)
    if evs.get_run(run_id)["spec"]["spec"].get("gateway_url"):
        evs.backfill_costs(run_id)  # the remote gateway records costs after answering
    summary = evs.summary(run_id, ci=ci)
    diffs = baseline_diffs(evs, summary, baseline) if baseline else []
    mig = migration(evs, summary, migration_pairs) if migration_pairs else None
    gate_diffs = list(diffs)
    for m in mig or []:  # a migration regresses when the candidate does worse than the baseline
        gate_diffs.append({**m["diff"], "variant": m["candidate_variant"],
                           "base_pass_rate": (m["baseline"] or {}).get("pass_rate"),
                           "pass_rate": (m["candidate"] or {}).get("pass_rate")})
    failures = gate.check(summary, gate_diffs) if _gate_active(gate, baseline or ("migration" if mig else None)) \
        else None
    shown_diffs = diffs
    if not quiet and json_out != "-":  # JSON on stdout replaces the tables
        TerminalReport(summary, shown_diffs, failures, mig).render(_console())
    if html:
        Path(html).write_text(render_html(summary, shown_diffs, failures, mig), encoding="utf-8")
        print(f"HTML report: {html}", file=sys.stderr)
    if json_out:
        write_json(as_json(summary, shown_diffs, failures, mig), json_out)
    if cases_csv and migration_pairs:
        with open(cases_csv, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["case_id", "rep", "baseline_variant", "baseline_passed", "baseline_output", "baseline_cost_usd",
                        "baseline_latency_ms", "candidate_variant", "candidate_passed", "candidate_output",
                        "candidate_cost_usd", "candidate_latency_ms"])
            for a, b in migration_pairs:
                for c in iter_case_pairs(evs, run_id, a, b):
                    ra, rb = c["a"], c["b"]
                    w.writerow([c["case_id"], c["rep"], a, ra["passed"], ra["output"], ra["cost_usd"], ra["latency_ms"],
                                b, rb["passed"], rb["output"], rb["cost_usd"], rb["latency_ms"]])
        print(f"case-by-case CSV: {cases_csv}", file=sys.stderr)
    return EXIT_GATE if failures else 0


def _run_and_report(args: argparse.Namespace, loaded: Any, *, kind: str = "run",
                    migration: tuple[str, str] | None = None) -> int:
    from ..store import open_store
    from .runner import run_eval

    result = run_eval(loaded, resume=args.resume, run_id=args.run_id, repeat=args.repeat,
                      concurrency=args.concurrency, limit=args.limit, store_url=args.store,
                      progress=not args.no_progress, retry_errors=args.retry_errors, kind=kind)
    rate = result.ran / result.elapsed_s if result.elapsed_s > 0 else 0.0
    print(f"run {result.run_id}: {result.status}, {result.done}/{result.total} cases recorded "
          f"({result.ran} run now in {result.elapsed_s:.1f} s, {rate:.1f}/s)", file=sys.stderr)
    if result.spans_dropped:
        warn(f"warning: the recorder dropped {result.spans_dropped} spans (its queue was full); "
             "some case traces are incomplete")
    if result.status == "interrupted":
        return fail(f"interrupted; resume with: shipyard eval run {loaded.path or 'EVAL.yaml'} "
                    f"--resume {result.run_id}", EXIT_INTERRUPTED)
    store = open_store(result.store_url)
    try:
        spec = loaded.spec
        pairs = None
        if migration is not None:
            from .report import migration_pairs
            from .results import EvalStore

            pairs = migration_pairs(EvalStore(store).variants(result.run_id), *migration)
        return report_run(store, result.run_id, baseline=args.baseline or spec.baseline, gate=_gate_from(args, spec),
                          html=args.html, json_out=args.json, ci=args.ci or spec.ci, migration_pairs=pairs,
                          cases_csv=getattr(args, "cases_csv", None))
    finally:
        store.close()


def cmd_eval_run(args: argparse.Namespace) -> int:
    from .spec import load_spec

    loaded = load_spec(args.spec)
    return _run_and_report(args, loaded)


def cmd_eval_compare(args: argparse.Namespace) -> int:
    """Model migration: the spec's prompts on the baseline and the candidate model."""
    from .report import migration_pairs
    from .results import EvalStore
    from .spec import load_spec

    if args.run_from:
        store = _open_store(args)
        try:
            evs = EvalStore(store)
            evs.get_run(args.run_from)
            pairs = migration_pairs(evs.variants(args.run_from), args.baseline_model, args.candidate_model)
            return report_run(store, args.run_from, baseline=None, gate=_gate_from(args), html=args.html,
                              json_out=args.json, ci=args.ci or "t", migration_pairs=pairs, cases_csv=args.cases_csv)
        finally:
            store.close()
    if not args.spec:
        from ..errors import InvalidRequest

        raise InvalidRequest("give EVAL.yaml (to run the comparison) or --run RUN_ID (to report on one)")
    loaded = load_spec(args.spec)
    raw = dict(loaded.raw)
    prompts = {}
    if raw.get("variants"):  # the prompts of an explicit variant list, once each
        for i, v in enumerate(loaded.variants):
            if v.prompt is not None and v.prompt_name not in prompts:
                prompts[v.prompt_name or f"p{i}"] = v.prompt.model_dump(exclude_none=True)
        raw.pop("variants")
        raw.pop("system", None)
        raw.pop("prompt", None)
        raw["prompts"] = prompts
    raw["models"] = [args.baseline_model, args.candidate_model]
    raw.pop("param_sets", None)
    raw["name"] = f"{raw.get('name', 'eval')}: {args.baseline_model} vs {args.candidate_model}"
    evaluators = [e for e in raw.get("evaluators") or [] if not (isinstance(e, dict) and e.get("type") == "pairwise")]
    raw["evaluators"] = evaluators
    plain = load_spec(raw, base_dir=loaded.base_dir)  # the variants, to pair them up
    if args.pairwise_judge:
        pairs = migration_pairs([v.describe() for v in plain.variants], args.baseline_model, args.candidate_model)
        judge = {"type": "pairwise", "name": "preference", "model": args.pairwise_judge, "pairs": pairs}
        if args.pairwise_rubric:
            judge["rubric"] = args.pairwise_rubric
        raw["evaluators"] = evaluators + [judge]
    compare_loaded = load_spec(raw, base_dir=loaded.base_dir)
    compare_loaded.path = loaded.path
    return _run_and_report(args, compare_loaded, kind="compare", migration=(args.baseline_model, args.candidate_model))


def cmd_eval_report(args: argparse.Namespace) -> int:
    from .results import EvalStore

    store = _open_store(args)
    try:
        run = EvalStore(store).get_run(args.run_id)
        from .spec import load_spec

        spec = load_spec(run["spec"]["spec"], base_dir=Path(run["spec"]["base_dir"])).spec
        return report_run(store, args.run_id, baseline=args.baseline, gate=_gate_from(args, spec), html=args.html,
                          json_out=args.json, ci=args.ci or spec.ci)
    finally:
        store.close()


def cmd_eval_list(args: argparse.Namespace) -> int:
    from .results import EvalStore

    store = _open_store(args)
    try:
        rows = EvalStore(store).list_runs(args.limit, args.name)
    finally:
        store.close()
    if args.json:
        print_json(rows)
        return 0
    print_table(RUN_COLUMNS, [
        [r["run_id"], r["kind"], r["status"], fmt_time(r["created_at"]), f"{r['dataset']} v{r['dataset_version']}",
         f"{r['done']:>6}/{r['total'] or 0:<6}"]
        for r in rows], empty="(no eval runs)")
    return 0


def cmd_eval_align(args: argparse.Namespace) -> int:
    from .alignment import align, labels_from_store, read_labels, render_alignment
    from .runner import open_target
    from .spec import load_spec

    loaded = load_spec(args.spec)
    errors: list[tuple[Any, str]] = []
    target = open_target(loaded, args.store)
    try:
        store = target.store
        if args.labels:
            labels = read_labels(args.labels, on_error=args.on_error, errors=errors)
            source = f"file:{Path(args.labels).name}"
        else:
            labels = labels_from_store(store, args.criterion)
            source = "human_labels"
        for where, msg in errors[:50]:
            warn(f"{args.labels}: line {where}: {msg} (skipped)")
        if args.criterion:
            labels = [lab for lab in labels if lab.criterion == args.criterion]
        if not labels:
            from ..errors import InvalidRequest

            raise InvalidRequest("no human labels to align with")

        async def go() -> dict[str, Any]:
            if hasattr(target.caller, "start"):
                await target.caller.start()
            return await align(store, loaded.evaluators, labels, criteria=loaded.spec.criteria, run_id=args.run,
                               rejudge=args.rejudge, caller=target.caller, base_dir=loaded.base_dir,
                               concurrency=loaded.spec.concurrency, source=source)

        report = asyncio.run(_with_close(go(), target))
        target = None
    finally:
        if target is not None:
            asyncio.run(target.close())
    if args.json:
        write_json(report, args.json)
    if args.json != "-":
        render_alignment(report, _console())
    return 0


async def _with_close(coro: Any, target: Any) -> Any:
    try:
        return await coro
    finally:
        await target.close()


def cmd_eval_judges(args: argparse.Namespace) -> int:
    from .alignment import Registry
    from .report import num

    store = _open_store(args)
    try:
        rows = Registry(store).judges(args.criterion)
    finally:
        store.close()
    if args.json:
        print_json(rows)
        return 0
    print_table(JUDGE_COLUMNS, [
        [r["criterion"], r["judge"], r["version"], fmt_time(r["created_at"]), num(r["alignment"]), num(r["kappa"]),
         fmt(r["n"]), "yes" if r["selected"] else ""]
        for r in rows], empty="(no judges measured yet: shipyard eval align EVAL.yaml --labels FILE)")
    return 0


# ---- argparse ----------------------------------------------------------------------------------

def add_commands(sub: Any, with_config: Callable[[argparse.ArgumentParser], None],
                 parse_since: Callable[[str], float]) -> None:
    def with_store(sp: argparse.ArgumentParser) -> None:
        with_config(sp)
        sp.add_argument("--store", help="store URL (default: the config's store)")

    d = sub.add_parser("datasets", help="versioned eval datasets")
    dsub = d.add_subparsers(dest="datasets_command", required=True)

    di = dsub.add_parser("import", help="import a JSONL or CSV file as a new version")
    with_store(di)
    di.add_argument("name")
    di.add_argument("file")
    di.add_argument("--format", choices=["jsonl", "csv", "tsv"], help="default: from the file extension")
    di.add_argument("--on-error", choices=["skip", "fail"], default="skip",
                    help="a row that does not parse: skip it (reported with its line number) or fail the import")
    di.add_argument("--append", action="store_true", help="new version = the latest version's items + these")
    di.add_argument("--description")
    di.add_argument("--holdout", type=float, default=0.0, help="fraction of items (by id hash) in the holdout split")
    di.set_defaults(func=cmd_datasets_import)

    dt = dsub.add_parser("from-traces", help="a new version from hand-picked or filtered production traces")
    with_store(dt)
    dt.add_argument("name")
    dt.add_argument("--trace-id", action="append", help="a trace to include (repeatable)")
    dt.add_argument("--trace-ids-file", help="a file with one trace id per line")
    dt.add_argument("--since", type=parse_since, default=None, help="e.g. 24h, 7d (default 7d)")
    dt.add_argument("--until", type=parse_since, default=None)
    dt.add_argument("--alias")
    dt.add_argument("--model")
    dt.add_argument("--user")
    dt.add_argument("--session")
    dt.add_argument("--status", choices=["ok", "error"])
    dt.add_argument("--q", help="free text in the request or answer")
    dt.add_argument("--min-cost", type=float)
    dt.add_argument("--max-cost", type=float)
    dt.add_argument("--min-latency-ms", type=float)
    dt.add_argument("--max-latency-ms", type=float)
    dt.add_argument("--limit", type=int, default=1000, help="at most this many traces (default 1000)")
    dt.add_argument("--expected", choices=["output", "none"], default="output",
                    help="use the recorded answer as the expected output (default) or leave it empty")
    dt.add_argument("--include-evals", action="store_true", help="keep traces made by eval runs")
    dt.add_argument("--on-error", choices=["skip", "fail"], default="skip")
    dt.add_argument("--append", action="store_true")
    dt.add_argument("--description")
    dt.add_argument("--holdout", type=float, default=0.0)
    dt.set_defaults(func=cmd_datasets_from_traces)

    dl = dsub.add_parser("list", help="datasets and their latest versions")
    with_store(dl)
    dl.add_argument("--json", action="store_true")
    dl.set_defaults(func=cmd_datasets_list)

    ds = dsub.add_parser("show", help="a dataset version and its first items")
    with_store(ds)
    ds.add_argument("name")
    ds.add_argument("--version", type=int)
    ds.add_argument("--split", choices=["train", "holdout"])
    ds.add_argument("--head", type=int, default=10)
    ds.add_argument("--json", action="store_true")
    ds.set_defaults(func=cmd_datasets_show)

    de = dsub.add_parser("export", help="write a version's items as JSONL")
    with_store(de)
    de.add_argument("name")
    de.add_argument("--version", type=int)
    de.add_argument("--split", choices=["train", "holdout"])
    de.add_argument("--out", "-o")
    de.set_defaults(func=cmd_datasets_export)

    e = sub.add_parser("eval", help="run evals, report, compare models, align judges")
    esub = e.add_subparsers(dest="eval_command", required=True)

    def run_options(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--store", help="store URL for datasets and results (default: the spec's, else the config's)")
        sp.add_argument("--resume", metavar="RUN_ID", help="resume an interrupted run (finished cases are not redone)")
        sp.add_argument("--run-id", help="id for a new run (default: generated)")
        sp.add_argument("--repeat", type=int, help="run each case N times (nondeterminism: flip rate, pass@k)")
        sp.add_argument("--concurrency", type=int, help="cases in flight (default: the spec's, 8)")
        sp.add_argument("--limit", type=int, help="only the first N dataset items")
        sp.add_argument("--retry-errors", action="store_true", help="with --resume: redo cases whose call failed")
        sp.add_argument("--no-progress", action="store_true")
        report_options(sp)

    def report_options(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--baseline", metavar="RUN_ID", help="diff against this run: flipped cases, Δ pass rate")
        sp.add_argument("--fail-under", type=float, metavar="RATE",
                        help="exit 1 if a variant's pass rate is under RATE (0..1)")
        sp.add_argument("--max-error-rate", type=float, metavar="RATE", help="exit 1 if more cases than this errored")
        sp.add_argument("--fail-on-regression", action="store_true",
                        help="with --baseline: exit 1 if a variant's pass rate fell")
        sp.add_argument("--regression-tolerance", type=float, help="pass-rate drop tolerated (default 0)")
        sp.add_argument("--html", metavar="FILE", help="write the HTML report")
        sp.add_argument("--json", metavar="FILE", help="write the report as JSON ('-': stdout)")
        sp.add_argument("--ci", choices=["t", "bootstrap"], help="interval for mean scores (default t)")

    er = esub.add_parser("run", help="run an EVAL.yaml")
    er.add_argument("spec", metavar="EVAL.yaml")
    run_options(er)
    er.set_defaults(func=cmd_eval_run)

    ec = esub.add_parser("compare", help="model migration: same prompts, baseline model vs candidate, case by case")
    ec.add_argument("spec", metavar="EVAL.yaml", nargs="?")
    ec.add_argument("--baseline-model", "--from", dest="baseline_model", required=True,
                    help="the current model (alias), or a variant name with --run")
    ec.add_argument("--candidate-model", "--to", dest="candidate_model", required=True,
                    help="the model to migrate to (alias), or a variant name with --run")
    ec.add_argument("--run", dest="run_from", metavar="RUN_ID", help="report on an existing run instead of running")
    ec.add_argument("--pairwise-judge", metavar="ALIAS", help="also ask this judge which answer is better")
    ec.add_argument("--pairwise-rubric")
    ec.add_argument("--cases-csv", metavar="FILE", help="write every case side by side as CSV")
    with_config(ec)
    run_options(ec)
    ec.set_defaults(func=cmd_eval_compare)

    ep = esub.add_parser("report", help="report on a finished run (terminal, HTML, JSON, gate)")
    ep.add_argument("run_id")
    with_config(ep)
    ep.add_argument("--store")
    ep.add_argument("--spec", metavar="EVAL.yaml", help="find the store through this spec")
    report_options(ep)
    ep.set_defaults(func=cmd_eval_report)

    el = esub.add_parser("list", help="recent eval runs")
    with_store(el)
    el.add_argument("--spec", metavar="EVAL.yaml", help="find the store through this spec")
    el.add_argument("--name")
    el.add_argument("--limit", type=int, default=20)
    el.add_argument("--json", action="store_true")
    el.set_defaults(func=cmd_eval_list)

    ea = esub.add_parser("align", help="check judges against human labels (agreement, kappa, EvalGen alignment)")
    ea.add_argument("spec", metavar="EVAL.yaml")
    ea.add_argument("--labels", metavar="FILE", help="JSONL/CSV of {trace_id or case_id, criterion, label} "
                                                     "(default: the review queue's human_labels table)")
    ea.add_argument("--run", metavar="RUN_ID", help="use this run's stored evaluator results (case_id labels)")
    ea.add_argument("--rejudge", action="store_true", help="with --run: judge the run's stored answers again now")
    ea.add_argument("--criterion")
    ea.add_argument("--on-error", choices=["skip", "fail"], default="skip")
    ea.add_argument("--store")
    ea.add_argument("--json", metavar="FILE")
    ea.set_defaults(func=cmd_eval_align)

    ej = esub.add_parser("judges", help="judge versions and their latest alignment")
    with_store(ej)
    ej.add_argument("--spec", metavar="EVAL.yaml", help="find the store through this spec")
    ej.add_argument("--criterion")
    ej.add_argument("--json", action="store_true")
    ej.set_defaults(func=cmd_eval_judges)
