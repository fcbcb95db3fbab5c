"""The verbs that show and lift escalation bans: bans, unban."""

from __future__ import annotations

import click

from ._shared import common, emit, kernel, reading_plan


@click.command()
@common
def bans(config: str | None, as_json: bool) -> None:
    """Sources banned by escalation (IPv6: their /64), when each ban expires, and why."""
    import time as _time

    from .. import bans as bans_mod
    from ..attacklog import NoLog
    from ..policy.load import load_policy
    from ..records import Records

    policy, _source = load_policy(config)
    nft = kernel()
    plan = reading_plan(policy, nft)
    found = bans_mod.banned(plan, nft)
    try:
        why = bans_mod.reasons(Records(policy.sampler.log)) if found else {}
    except (OSError, NoLog):  # no log: the bans are listed without their reasons
        why = {}
    now = _time.time()
    rows = [{"source": b.shown, "family": f"ipv{b.version}", "expires_in_s": b.expires_s,
             "expires_at": now + b.expires_s if b.expires_s is not None else None,
             "reason": bans_mod.describe(why.get(b.shown)), "groups": (why.get(b.shown) or {}).get("groups", []),
             "banned_at": (why.get(b.shown) or {}).get("ts")} for b in found]
    if not bans_mod.escalation_sets(plan):
        text = "nothing escalates in this policy (escalate.enabled: false, or no per-source limit in enforce mode)\n"
    elif not rows:
        text = "no banned sources\n"
    else:
        text = f"{len(rows)} banned source{'s' if len(rows) != 1 else ''}:\n" + "".join(
            f"  {r['source']:<24} expires in {r['expires_in_s'] if r['expires_in_s'] is not None else '?':>6} s  "
            f"{r['reason']}\n" for r in rows)
    emit({"bans": rows, "escalation": bool(bans_mod.escalation_sets(plan))}, as_json, text)


@click.command()
@common
@click.argument("address", required=False)
@click.option("--all", "everyone", is_flag=True, help="Unban every source.")
def unban(config: str | None, as_json: bool, address: str | None, everyone: bool) -> None:
    """Lift the ban of ADDRESS (IPv6: its /64), or of every source with --all; it starts from a clean
    slate (its over-limit episode is forgotten too)."""
    from .. import bans as bans_mod
    from ..policy.load import load_policy

    if bool(address) == everyone:
        raise bans_mod.BadAddress("unban: give one address, or --all")
    keys = None if everyone else [bans_mod.key_of(address)]  # a bad address: one line, exit 2, kernel untouched
    policy, _source = load_policy(config, trusted=True)  # it changes the kernel's sets
    nft = kernel()
    gone = bans_mod.unban(reading_plan(policy, nft), nft, keys)
    if gone:
        text = f"unbanned {', '.join(gone)}\n"
    else:
        text = "no banned sources\n" if everyone else f"{keys[0][0]}{'/64' if keys[0][1] == 6 else ''} was not banned\n"
    emit({"unbanned": gone}, as_json, text)
