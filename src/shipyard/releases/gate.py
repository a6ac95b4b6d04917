"""The promotion gate: run a named eval and say whether it passed.

The contract is the eval CLI's: ``shipyard eval run EVAL.yaml [--fail-under X]`` exits 0
when the eval passes its gate and non-zero otherwise. Shelling out keeps the two features
independent (any eval runner honouring that contract works, see ``releases.gate_command``)
and gives the eval its own process, event loop and engine. The prompt version under test
is passed in the environment so an eval spec can refer to it with ``${...}``:

- ``SHIPYARD_GATE_PROMPT`` (name), ``SHIPYARD_GATE_VERSION`` (number),
  ``SHIPYARD_GATE_MODEL`` (``prompt:NAME@VERSION``), ``SHIPYARD_GATE_ALIAS`` (the version's
  alias) and ``SHIPYARD_GATE_LABEL`` (the label being moved).

Anything other than exit code 0 — a failing eval, a missing eval file, a runner that is not
installed, a timeout — is a failed gate (fail closed).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence


def gate_argv(eval_path: str, fail_under: float | None = None, command: Sequence[str] | None = None) -> list[str]:
    if command:
        argv = [a.replace("{eval}", eval_path) for a in command]
        if not any("{eval}" in a for a in command):
            argv.append(eval_path)
    else:
        argv = [sys.executable, "-m", "shipyard.cli", "eval", "run", eval_path]
    if fail_under is not None:
        argv += ["--fail-under", repr(float(fail_under))]
    return argv


def _tail(text: str, lines: int = 15, chars: int = 2000) -> str:
    out = "\n".join(text.strip().splitlines()[-lines:])
    return out[-chars:]


def run_gate(eval_name_or_path: str, fail_under: float | None = None, *, env: dict[str, str] | None = None,
             command: Sequence[str] | None = None, timeout_s: float = 1800.0,
             config: str | None = None) -> tuple[bool, str]:
    """(passed, summary). ``summary`` is the last lines of the eval's output, or why it could not run."""
    if not command and not os.path.exists(eval_name_or_path):
        return False, f"gate {eval_name_or_path}: no such eval file"
    argv = gate_argv(eval_name_or_path, fail_under, command)
    full_env = {**os.environ, **(env or {})}
    if config:
        full_env["SHIPYARD_CONFIG"] = config
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, env=full_env, check=False,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return False, f"gate {eval_name_or_path}: timed out after {timeout_s:g} s"
    except OSError as exc:
        return False, f"gate {eval_name_or_path}: could not start the eval runner ({exc.strerror})"
    output = _tail((proc.stdout or "") + ("\n" + proc.stderr if proc.stderr else ""))
    if proc.returncode == 0:
        return True, output or "eval passed"
    if "invalid choice: 'eval'" in (proc.stderr or ""):
        output = "the eval runner (`shipyard eval run`) is not available in this installation"
    return False, f"exit code {proc.returncode}: {output}" if output else f"exit code {proc.returncode}"
