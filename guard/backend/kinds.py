"""The two kinds of backend a policy can ask for (``backend: nft`` or ``iptables``), and what each
answers for a plan: which iptables tools (flavour), which sampler transport under ``auto``, whether
IPVS switches ``closed_ports`` off, whether the render depends on foreign base chains, and how the
Backend is made from the ruleset, and what of it is installed and how that is removed (apply.py's
cleanup after a switch, and uninstall). ``kind_for`` is the one place that reads ``policy.backend``.

``Installed`` names one installed backend (a kind and its flavour), ``Removed`` what was removed of
it; their text for people is made by ``describe``, where it is printed, and never read back.
The iptables modules are imported only when the iptables kind is asked for its backend or flavour.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import BackendError

if TYPE_CHECKING:
    from ..model.ruleset import RuleSet
    from ..policy.schema import Policy
    from .base import Backend
    from .nft import Nft


def _may_hold_ipt_nft(nft: Nft) -> bool:
    """iptables-nft chains are nft chains: one in-process listing."""
    from ..render.ipt_names import PREFIX
    from .nft import objects

    return any(c["name"].startswith(PREFIX + "-") for c in objects(nft.list("chains"), "chain")
               if c["family"] in ("ip", "ip6"))


def _may_hold_ipt_legacy(nft: Nft) -> bool:
    """Legacy chains need legacy tables (never made to exist by looking)."""
    from ..probe import legacy_tables

    return any(legacy_tables(v) for v in (4, 6))


_MAY_HOLD = {"nft": _may_hold_ipt_nft, "legacy": _may_hold_ipt_legacy}  # flavour -> a cheap look
IPT_FLAVOURS = tuple(_MAY_HOLD)


@dataclass(frozen=True)
class Installed:
    """One backend as installed: its kind, and for iptables its flavour ("nft" or "legacy")."""
    kind: NftKind | IptKind
    flavour: str | None = None


@dataclass(frozen=True)
class Removed:
    """What uninstalling removed: one backend's objects (iptables: of IP ``version``), or the ipsets."""
    backend: Installed | None  # None: the ipsets, which only the iptables kind uses (either flavour)
    version: int | None = None


def describe(removed: list[Removed]) -> list[str]:
    """``removed`` as people read it (and ``apply --json`` / ``uninstall --json`` print it)."""
    return [label(r.backend) + (f" v{r.version}" if r.version else "") if r.backend else "ipsets" for r in removed]


def label(installed: Installed) -> str:
    """"nft", "iptables-nft" or "iptables-legacy": the name a backend goes by in status, logs and metrics."""
    return installed.kind.name + (f"-{installed.flavour}" if installed.flavour else "")


_QUEUE_PROBE: dict[str, bool] = {}


def nft_queue_supported(nft: Nft) -> bool:
    """Does this kernel have the nft ``queue`` expression (CONFIG_NFT_QUEUE)? One check-mode transaction."""
    if "nft" not in _QUEUE_PROBE:
        t = {"family": "inet", "name": "nodeguard-probe"}
        probe_tx = {"nftables": [
            {"add": {"table": t}},
            {"add": {"chain": {**t, "table": t["name"], "name": "c"}}},
            {"add": {"rule": {"family": "inet", "table": t["name"], "chain": "c", "expr": [{"queue": {"num": 0}}]}}},
        ]}
        try:
            nft.run(probe_tx, dry_run=True, what="probe nft queue")
            _QUEUE_PROBE["nft"] = True
        except BackendError:
            _QUEUE_PROBE["nft"] = False
    return _QUEUE_PROBE["nft"]


@dataclass(frozen=True)
class NftKind:
    """Table ``inet nodeguard``: base chains of our own, at priorities chosen around foreign ones."""
    name: str = "nft"
    reads_foreign: bool = True  # the render's priorities depend on the foreign base chains on our hooks

    def uncounted_groups(self) -> tuple[str, ...]:
        """Every group's sources are counted (native set counters)."""
        return ()

    def flavour(self, policy: Policy, nft: Nft | None) -> tuple[str, str] | None:
        return None

    def auto_transport(self, nft: Nft | None) -> tuple[str, str]:
        """The sampler's transport under ``auto``, and why: NFQUEUE where the kernel has the nft queue expression."""
        if nft is None:
            return "nflog", "auto: not probed (no privileges)"
        if nft_queue_supported(nft):
            return "nfqueue", "auto: this kernel has the nft queue expression"
        return "nflog", "auto: this kernel lacks the nft queue expression (CONFIG_NFT_QUEUE)"

    def closed_ports_off(self, policy: Policy) -> bool:
        """nft has a table after IPVS on input: closed_ports stays on."""
        return False

    def backend(self, ruleset: RuleSet, flavour: tuple[str, str] | None) -> tuple[Backend, str]:
        """The Backend holding the render of ``ruleset``, and why this backend."""
        from ..render import nft as render_nft
        from .nft_backend import NftBackend

        return NftBackend(render_nft.render_nft(ruleset)), "the policy says backend: nft"

    def installed(self, flavour: str | None = None) -> Installed:
        return Installed(self)

    def present(self, nft: Nft, but: Installed | None = None) -> list[Installed]:
        """Our table, if the kernel holds it; not looked for when it is ``but``."""
        from ..model.ruleset import TABLE
        from ..render.nft import FAMILY
        from .nft import objects

        if but == self.installed():
            return []
        held = any(t["family"] == FAMILY and t["name"] == TABLE for t in objects(nft.list("tables"), "table"))
        return [self.installed()] if held else []

    def remove(self, installed: list[Installed], keep: Installed | None, nft: Nft, dry_run: bool) -> list[Removed]:
        """Delete our table (``dry_run``: say so, changing nothing); one transaction."""
        from ..render.nft import table_ref
        from ..sync.nft import delete_table

        if installed and not dry_run:
            nft.run(delete_table(table_ref()).json(), what="remove nft backend")
        return [Removed(i) for i in installed]


@dataclass(frozen=True)
class IptKind:
    """Own chains plus jumps in the iptables tables, ipsets; the flavour's tools (nft or legacy)."""
    name: str = "iptables"
    reads_foreign: bool = False  # its competitors are rules ahead of our jumps, not base chains

    def uncounted_groups(self) -> tuple[str, ...]:
        """A count is three xt set operations per packet (nft_compat on iptables-nft): for RSTs conntrack
        calls invalid, which no protection discards for ~4 µs, they made the drop cost more than no
        protection. Such a RST has no connection behind it (its source is spoofed as a rule); the samples
        estimate them."""
        from ..model.build import INVALID_RST

        return (INVALID_RST,)

    def flavour(self, policy: Policy, nft: Nft | None) -> tuple[str, str]:
        """The iptables tools to use, and why."""
        if policy.iptables.flavour != "auto":
            return policy.iptables.flavour, "iptables.flavour in the policy"
        from .ipt import detect_flavour

        return detect_flavour() if nft else ("nft", "not probed (no privileges)")

    def auto_transport(self, nft: Nft | None) -> tuple[str, str]:
        return "nfqueue", "auto: the iptables backend uses xt NFQUEUE"

    def closed_ports_off(self, policy: Policy) -> bool:
        """IPVS takes Services' packets on input after every iptables table: the rule would see them."""
        from .. import probe

        return policy.closed_ports.enabled and probe.ipvs_loaded()

    def backend(self, ruleset: RuleSet, flavour: tuple[str, str] | None) -> tuple[Backend, str]:
        """The Backend holding the render of ``ruleset`` for ``flavour`` (flavour, why), and why."""
        from ..render import ipt as render_ipt
        from .ipt_backend import IptBackend

        assert flavour is not None
        return (IptBackend(flavour[0], {v: render_ipt.render_ipt(ruleset, v) for v in (4, 6)},
                           tuple(render_ipt.ipsets(ruleset))), flavour[1])

    def installed(self, flavour: str | None = None) -> Installed:
        return Installed(self, flavour)

    def present(self, nft: Nft, but: Installed | None = None) -> list[Installed]:
        """The flavours but ``but`` that may hold our chains or jumps (a cheap look each, no iptables tool run)."""
        return [i for f, may_hold in _MAY_HOLD.items() if (i := self.installed(f)) != but and may_hold(nft)]

    def remove(self, installed: list[Installed], keep: Installed | None, nft: Nft, dry_run: bool) -> list[Removed]:
        """Remove our chains and jumps of each flavour in ``installed`` (one restore per IP version), then,
        unless ``keep`` is a flavour of this kind (which uses them), our ipsets: after a removal, or on
        uninstall (``keep`` None). ``dry_run``: what would be removed, changing nothing."""
        removed = []
        for one in installed:
            from ..sync import ipt as sync_ipt
            from .ipt import Ipt

            ipt = Ipt(one.flavour)
            tx = sync_ipt.uninstall(one.flavour, {v: ipt.live(v) for v in (4, 6)})
            if not dry_run:
                ipt.restore_families(tx.restore)
            removed += [Removed(one, v) for v, text in tx.restore.items() if text]
        if (keep is None or keep.kind is not self) and (removed or keep is None):
            from .ipset import Ipset

            stale = Ipset.names()  # one process
            if stale:
                if not dry_run:
                    Ipset.destroy(stale)
                removed.append(Removed(None))
        return removed


NFT, IPTABLES = NftKind(), IptKind()
KINDS = {k.name: k for k in (NFT, IPTABLES)}


def kind_for(policy: Policy) -> NftKind | IptKind:
    """The kind the policy's ``backend:`` names (validated: "nft" or "iptables")."""
    return KINDS[policy.backend]
