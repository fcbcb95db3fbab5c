"""Live state vs the render of the policy: what differs, and who is to blame.

Rules are compared by the IDs in their comments (taken from the renderer), base chains by
hook and priority (re-chosen by the probe against the live foreign chains), sets and limit
objects by name and definition (a name ends in a digest of the definition, so a changed size,
timeout or rate is a different name), allowlists by content, deny sets by how many elements the
kernel holds (their name is a digest of their prefixes, but a flush leaves the name). Meter contents
are state, not configuration, and are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from .fingerprints import Fingerprints

if TYPE_CHECKING:
    from .apply import Live, Plan
    from .backend.nft import Nft


class Reason(NamedTuple):
    kind: str  # a short fixed word: the label of nodeguard_repairs_total (KINDS)
    text: str


KINDS = ("table_missing", "table_flags", "priority", "jump", "rules_changed", "allowlist", "deny_elements",
         "object_redefined", "unexpected_objects", "object_missing", "chain_missing", "rewritten", "other")


@dataclass(frozen=True)
class Drift:
    reasons: tuple[Reason, ...]
    culprit: str | None = None  # a foreign chain or rule that out-prioritised us, when that is the cause
    families: frozenset[int] = frozenset({4, 6})  # iptables: which families need a restore
    in_place: bool = False  # only the rules inside chains we have differ: a rewrite of those keeps every counter

    def __str__(self) -> str:
        return "; ".join(r.text for r in self.reasons)

    @property
    def kind(self) -> str:
        """What a repair of it is counted as: the kind of its first reason."""
        return self.reasons[0].kind if self.reasons else "other"


def diff_plan(plan: Plan, nft: Nft, live: Live | None = None, fingerprints: Fingerprints | None = None
              ) -> Drift | None:
    """The drift of whichever backend the plan is for (reads the live state unless given).
    ``fingerprints`` (fingerprints.py): our rules' bodies as installed; a rule rewritten under our
    comment is drift too."""
    live = live if live is not None else plan.backend.read_live(nft)
    drift = plan.backend.diff(plan, live)
    rewritten = _rewritten(plan.backend.fingerprints(live), fingerprints) if fingerprints else []
    if not rewritten:
        return drift
    reason = Reason("rewritten", f"{len(rewritten)} rule(s) rewritten under nodeguard's comments")
    if drift is None:
        return Drift((reason,))
    return Drift((*drift.reasons, reason), drift.culprit, drift.families or frozenset({4, 6}))


def _rewritten(now: Fingerprints, installed: Fingerprints) -> list[str]:
    return [rid for rid, body in now.items() if rid in installed and installed[rid] != body]


def objects_diff(kind: str, want: dict[str, dict], have: dict[str, dict], same) -> list[Reason]:
    out = [Reason("object_missing", f"{kind} {n} is missing") for n in want if n not in have]
    out += [Reason("object_redefined", f"{kind} {n} has another definition")
            for n in want if n in have and not same(have[n], want[n])]
    return out + [Reason("unexpected_objects", f"unexpected {kind} {n}") for n in have if n not in want]
