"""How the ``shipyard`` commands print: JSON, fixed-width tables, times, numbers and errors."""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson


def print_json(data: Any, *, indent: bool = True) -> None:
    """``data`` as JSON on stdout: indented, or on one line with ``indent=False``."""
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2 if indent else None, default=str).decode() + "\n")


def write_json(data: Any, path: str) -> None:
    """``data`` as indented JSON in the file ``path``, or on stdout when ``path`` is ``-``."""
    if path == "-":
        print_json(data)
    else:
        Path(path).write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2, default=str))


def fmt_time(ts: float | None, *, seconds: bool = True) -> str:
    """A unix time as UTC ``YYYY-MM-DD HH:MM:SS`` (``HH:MM`` without seconds); ``-`` if None."""
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")


def fmt(v: Any, spec: str = "") -> str:
    """``v`` formatted with ``spec``; ``-`` if None."""
    if v is None:
        return "-"
    return format(v, spec) if spec else str(v)


def pct(v: Any) -> str:
    """A rate (0..1) as a percentage with one decimal; ``-`` if None."""
    return "-" if v is None else f"{100 * float(v):.1f}%"


@dataclass(frozen=True, slots=True)
class Column:
    title: str
    width: int = 0  # 0: as wide as its text (the last column)
    align: str = "<"  # ">" for numbers
    clip: bool = False  # cut longer values to the width


def _line(columns: Sequence[Column], cells: Sequence[Any], clip: bool = True) -> str:
    return "  ".join(format(cell[:c.width] if clip and c.clip else cell, f"{c.align}{c.width}" if c.width else "")
                     for c, cell in zip(columns, cells))


def print_table(columns: Sequence[Column], rows: Iterable[Sequence[Any]], empty: str | None = None) -> None:
    """A header and one line per row, columns two spaces apart; ``empty`` when there are no rows."""
    print(_line(columns, [c.title for c in columns], clip=False))
    n = 0
    for row in rows:
        print(_line(columns, row))
        n += 1
    if not n and empty:
        print(empty)


def warn(message: object) -> None:
    """``shipyard: message`` on stderr."""
    print(f"shipyard: {message}", file=sys.stderr)


def fail(message: object, code: int = 1) -> int:
    """Say what went wrong on stderr; the exit code to return."""
    warn(message)
    return code
