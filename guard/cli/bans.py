"""The verbs that make, show and lift bans: ban (by hand), bans, unban."""

from __future__ import annotations

import click

from ._shared import common, emit, kernel, reading_plan


@click.command()
@common
@click.argument("target")
@click.option("--for", "for_", metavar="DURATION", default=None,
              help="Lift the ban after this long: seconds, or with s, m, h or d (10m, 2h, 7d). Default: never.")
@click.option("--reason", default=None, help="Why (shown by bans; at most 100 bytes of printable UTF-8).")
def ban(config: str | None, as_json: bool, target: str, for_: str | None, reason: str | None) -> None:
    """Drop TARGET (an address or CIDR, v4 or v6) before conntrack unless allowlisted or failsafe, until
    --for runs out or unban lifts it (a bare RST goes on to conntrack, which ends nothing else with it:
    one that belongs to no connection is dropped just after). Banning it again sets the new expiry and
    reason."""
    from .. import manual
    from ..policy.load import load_policy

    prefix, version = manual.target(target)  # bad input: one line, exit 2, kernel untouched
    for_s = manual.duration(for_) if for_ is not None else None
    why = manual.reason(reason)
    policy, _source = load_policy(config, trusted=True)  # it changes the kernel's sets
    nft = kernel()
    manual.ban(reading_plan(policy, nft), nft, prefix, version, for_s, why)
    emit({"banned": prefix, "for_s": for_s, "reason": why}, as_json,
         f"banned {prefix} {'for ' + str(for_s) + ' s' if for_s else 'until unbanned'}\n")


@click.command()
@common
def bans(config: str | None, as_json: bool) -> None:
    """Sources banned by hand (ban), by CrowdSec decisions and by escalation (IPv6: their /64), when each
    ban expires, and why."""
    import time as _time

    from .. import bans as bans_mod
    from .. import manual
    from ..attacklog import NoLog
    from ..logs import one_line
    from ..crowdsec import listing as crowdsec_listing
    from ..policy.load import load_policy
    from ..records import Records

    policy, _source = load_policy(config)
    nft = kernel()
    plan = reading_plan(policy, nft)
    by_hand = manual.banned(plan, nft)
    by_crowdsec = crowdsec_listing.banned(plan, nft)
    found = bans_mod.banned(plan, nft)
    try:
        why = bans_mod.reasons(Records(policy.sampler.log)) if found else {}
    except (OSError, NoLog):  # no log: the bans are listed without their reasons
        why = {}
    now = _time.time()

    def row(source: str, version: int, left: int | None, by: str, reason: str, record: dict | None = None) -> dict:
        return {"source": source, "family": f"ipv{version}", "expires_in_s": left,
                "expires_at": now + left if left is not None else None, "by": by, "reason": reason,
                "groups": (record or {}).get("groups", []), "banned_at": (record or {}).get("ts")}

    rows = [row(m.prefix, m.version, m.expires_s, "hand", m.reason or "banned by hand") for m in by_hand]
    rows += [row(p, v, left, "crowdsec", f"CrowdSec: {scenario}") for p, v, left, scenario in by_crowdsec]
    rows += [row(b.shown, b.version, b.expires_s, "escalation", bans_mod.describe(why.get(b.shown)), why.get(b.shown))
             for b in found]
    escalates = bool(bans_mod.escalation_sets(plan))
    if not rows:
        text = "no banned sources" + ("" if escalates else " (and nothing escalates in this policy: escalate.enabled: "
                                      "false, or no per-source limit in enforce mode)") + "\n"
    else:
        text = f"{len(rows)} banned source{'s' if len(rows) != 1 else ''}:\n" + "".join(
            f"  {r['source']:<24} expires in "
            f"{(str(r['expires_in_s']) + ' s') if r['expires_in_s'] is not None else 'never':>8}  "
            f"{one_line(r['reason'])}\n"
            for r in rows)
    emit({"bans": rows, "escalation": escalates}, as_json, text)


@click.command()
@common
@click.argument("address", required=False)
@click.option("--all", "everyone", is_flag=True, help="Unban every source.")
def unban(config: str | None, as_json: bool, address: str | None, everyone: bool) -> None:
    """Lift the ban of ADDRESS (an address or a CIDR banned by hand; IPv6 escalation bans: the /64), or
    of every source with --all; an escalation ban starts from a clean slate (its over-limit episode is
    forgotten too)."""
    from .. import bans as bans_mod
    from .. import manual
    from ..policy.load import load_policy

    if bool(address) == everyone:
        raise bans_mod.BadAddress("unban: give one address or CIDR, or --all")
    keys = prefix = None
    if not everyone:  # a bad address: one line, exit 2, kernel untouched
        try:
            keys = [bans_mod.key_of(address)]
        except bans_mod.BadAddress:
            keys = []
        try:
            prefix = manual.target(address)
        except manual.BadBan:
            if not keys:
                raise
    policy, _source = load_policy(config, trusted=True)  # it changes the kernel's sets
    nft = kernel()
    plan = reading_plan(policy, nft)
    gone = manual.unban(plan, nft, None if everyone else [prefix] if prefix else [])
    gone += bans_mod.unban(plan, nft, keys) if keys is None or keys else []
    if gone:
        text = f"unbanned {', '.join(gone)}\n"
    else:
        text = "no banned sources\n" if everyone else f"{address.strip()} was not banned\n"
    emit({"unbanned": gone}, as_json, text)
