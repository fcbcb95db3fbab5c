"""What ``nodeguard bans`` shows of the CrowdSec decisions: the ``crowdsec-*`` sets as installed, each
entry with the time it has left and its scenario (the element's comment: held.comment, held.scenario)."""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from .held import scenario

if TYPE_CHECKING:
    from ..backend.nft import Nft


def banned(plan, nft: Nft) -> list[tuple[str, int, int | None, str]]:
    """(prefix, IP version, seconds left, scenario) of every entry, addresses as their /32 or /128."""
    sets = {(s.version, s.role): s for s in plan.ruleset.sets if s.kind == "crowdsec"}
    out = []
    for (version, _role), name in sorted(plan.backend.installed_sets(nft, sets).items()):
        # the comment as the kernel holds it (anyone with CAP_NET_ADMIN may have written it): escaped
        # once where it is shown, as a manual ban's reason is (cli/bans.py, logs.one_line)
        out += [(str(ipaddress.ip_network(p)), version, left, scenario(why))
                for p, left, why in plan.backend.manual_bans(nft, name)]
    return out
