"""Schema migrations, per component.

Each feature owns its tables: it calls ``register("datasets", [step1, step2, ...])`` at import
time, and ``Store.migrate()`` applies every registered step not yet recorded in
``schema_migrations(component, version, applied_at)``. Steps are append-only: version N of a
component is its N-th step, forever.

A step is portable SQL (TEXT, BIGINT, INTEGER, DOUBLE PRECISION, ``ON CONFLICT ...``), or a
mapping from dialect name (``"sqlite"``, ``"postgresql"``) to SQL where they must differ; an
empty string means "nothing to do on this dialect" (the version is still recorded).

The store runs all pending steps in one transaction, holding a lock that serialises
concurrent starts (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: an advisory transaction lock),
so two processes starting together never apply a step twice.
"""

from __future__ import annotations

import threading
import time
import weakref
from typing import Any, Callable, Mapping, Sequence, Union

Step = Union[str, Mapping[str, str]]

_registry: dict[str, list[Step]] = {}
_lock = threading.Lock()

CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    component TEXT NOT NULL,
    version INTEGER NOT NULL,
    applied_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (component, version)
)
"""


def register(component: str, steps: Sequence[Step]) -> None:
    """Declare the migration steps of ``component`` (in order; version = position, from 1).

    Registering again is allowed when it only appends steps (a module reloaded, or a newer
    definition); changing or removing an existing step is an error."""
    if not component or not component.replace("_", "").isalnum():
        raise ValueError(f"migration component must be a simple name, not {component!r}")
    steps = list(steps)
    for i, step in enumerate(steps, start=1):
        if not isinstance(step, (str, Mapping)):
            raise TypeError(f"migration {component} v{i}: a step is SQL text or a mapping dialect -> SQL")
    with _lock:
        old = _registry.get(component, [])
        if steps[: len(old)] != old:
            raise ValueError(f"migration {component}: registered steps may only be appended to, never changed")
        _registry[component] = steps


def registered() -> list[tuple[str, list[Step]]]:
    with _lock:
        return [(c, list(s)) for c, s in _registry.items()]


def step_sql(component: str, version: int, step: Step, dialect: str) -> str:
    if isinstance(step, str):
        return step
    if dialect not in step:
        raise ValueError(f"migration {component} v{version} has no SQL for dialect {dialect!r}")
    return step[dialect]


def apply_pending(
    cur: Any,
    dialect: Any,
    execute_script: Callable[[Any, str], None],
) -> list[tuple[str, int]]:
    """Apply what is pending, inside the caller's (locked) transaction. Returns what was applied."""
    cur.execute(CREATE_TABLE)
    cur.execute("SELECT component, version FROM schema_migrations")
    done = {(c, int(v)) for c, v in cur.fetchall()}
    applied: list[tuple[str, int]] = []
    insert = dialect.q("INSERT INTO schema_migrations (component, version, applied_at) VALUES (?, ?, ?)")
    for component, steps in registered():
        for version, step in enumerate(steps, start=1):
            if (component, version) in done:
                continue
            sql = step_sql(component, version, step, dialect.name)
            if sql.strip():
                execute_script(cur, sql)
            cur.execute(insert, (component, version, time.time()))
            applied.append((component, version))
    return applied


def migrate_once() -> Callable[[Any], None]:
    """A function that migrates each store it is given once: for a feature package whose
    tables are registered after a store was opened (each package keeps its own memory)."""
    migrated: weakref.WeakSet[Any] = weakref.WeakSet()
    lock = threading.Lock()

    def ensure(store: Any) -> None:
        with lock:
            try:
                if store in migrated:
                    return
            except TypeError:  # not weak-referenceable: just migrate
                store.migrate()
                return
            store.migrate()
            migrated.add(store)

    return ensure
