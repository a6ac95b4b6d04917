"""Promotion: move a label to a version only after its eval gate passes; audited either way."""

from __future__ import annotations

from typing import Any

from ..errors import GatewayError, InvalidRequest
from .config import ReleasesConfig
from .gate import run_gate
from .prompts import check_label
from .registry import Conflict, Registry


class PromotionRejected(GatewayError):
    status = 409
    type = "invalid_request_error"


def promote(registry: Registry, name: str, to: str, *, actor: str, version: int | None = None,
            from_label: str | None = None, gate: str | None = None, fail_under: float | None = None,
            force: bool = False, cfg: ReleasesConfig | None = None, config_path: str | None = None) -> dict[str, Any]:
    """Point label ``to`` at ``version`` (or at what ``from_label`` points to, or the latest
    version) once ``gate`` passes. A protected label needs a gate unless ``force``d. A failed
    gate leaves the label where it was, records a ``promote_rejected`` audit row and raises
    :class:`PromotionRejected` (409)."""
    cfg = cfg or ReleasesConfig()
    check_label(to)
    if version is not None and from_label is not None:
        raise InvalidRequest("give either a version or a label to promote from, not both", param="version")
    info = registry.get(name)
    if version is None:
        v = registry.version(name, from_label if from_label is not None else "latest")
    else:
        v = registry.version(name, int(version))
    current = (info["labels"].get(to) or {}).get("version")
    summary = None
    if gate is None:
        if to in registry.cfg.protected_labels and not force:
            raise Conflict(f"Label '{to}' is protected: promotion needs an eval gate (--gate EVAL.yaml), "
                           "or --force (audited).", param="gate", code="gate_required")
    else:
        env = {"SHIPYARD_GATE_PROMPT": name, "SHIPYARD_GATE_VERSION": str(v.version),
               "SHIPYARD_GATE_MODEL": f"prompt:{name}@{v.version}", "SHIPYARD_GATE_ALIAS": v.model,
               "SHIPYARD_GATE_LABEL": to}
        passed, summary = run_gate(gate, fail_under, env=env, command=cfg.gate_command,
                                   timeout_s=cfg.gate_timeout_s, config=config_path)
        if not passed:
            row = registry.rs.record_audit(actor, "promote_rejected", name, label=to, from_version=current,
                                           to_version=v.version, gate=gate, gate_passed=False,
                                           detail={"summary": summary, "fail_under": fail_under})
            raise PromotionRejected(
                f"Promotion of prompt '{name}' version {v.version} to '{to}' was rejected: the gate {gate} failed. "
                f"{summary}", code="gate_failed",
                details={"audit_id": row["id"], "gate": gate, "summary": summary})
    action = "promote" if gate is not None or not force else "promote_forced"
    row = registry.set_label(name, to, v.version, actor, action=action, gate=gate,
                             gate_passed=True if gate is not None else None,
                             detail={"summary": summary, "fail_under": fail_under, "forced": force and gate is None})
    return {"prompt": name, "label": to, "from_version": current, "to_version": v.version, "gate": gate,
            "gate_passed": True if gate is not None else None, "summary": summary, "actor": actor,
            "audit_id": row["id"], "action": action}


def rollback(registry: Registry, name: str, label: str, *, actor: str) -> dict[str, Any]:
    """Move ``label`` back to the version it pointed at before its last move."""
    check_label(label)
    info = registry.get(name)
    current = (info["labels"].get(label) or {}).get("version")
    if current is None:
        raise InvalidRequest(f"Prompt '{name}' has no label '{label}' to roll back.", param="label")
    rows, _ = registry.rs.list_audit(prompt=name, start=0, limit=200)
    for r in rows:  # newest first
        if r["label"] == label and r["action"] in ("promote", "promote_forced", "move_label", "move_label_forced",
                                                   "rollback") and r["to_version"] == current:
            prev = r["from_version"]
            if prev is None:
                break
            row = registry.set_label(name, label, prev, actor, action="rollback",
                                     detail={"rolled_back_from": current, "undoes": r["id"]})
            return {"prompt": name, "label": label, "from_version": current, "to_version": prev, "actor": actor,
                    "audit_id": row["id"], "action": "rollback"}
    raise InvalidRequest(f"No earlier version of label '{label}' of prompt '{name}' is recorded.", param="label")
