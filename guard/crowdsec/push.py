"""The machine side: escalation bans (the sampler's ``ban`` records, bans.ban_records) reported to the
Local API as alerts that carry a ban decision (``POST /v1/alerts`` after ``POST /v1/watchers/login``),
so that the other nodes pull them. A source the node holds a LAPI decision for is never pushed back."""

from __future__ import annotations

import ipaddress
import time

from . import lapi

MAX_QUEUED = 10_000  # bans waiting for the LAPI; beyond this the oldest are dropped (and counted)
BATCH = 100  # alerts per POST


def alert(rec: dict, ban_s: int, origin: str) -> dict | None:
    """The alert for one ``ban`` record (IPv4: its address, scope Ip; IPv6: its /64, scope Range);
    None for a record that names no source."""
    try:
        net = ipaddress.ip_network(rec["src"])
    except (KeyError, TypeError, ValueError):
        return None
    groups = [g for g in rec.get("groups") or [] if isinstance(g, str)]
    scenario = f"nodeguard/{groups[0] if groups else 'escalation'}"
    scope, value = ("Ip", str(net.network_address)) if net.prefixlen == net.max_prefixlen else ("Range", str(net))
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(rec.get("ts") if isinstance(rec.get("ts"), float) else None))
    source = {"scope": scope, "value": value, **({"ip": value} if scope == "Ip" else {"range": value})}
    message = f"nodeguard on {origin}: over the per-source limit of {', '.join(groups) or 'a rule'} " \
              f"for {rec.get('after_s', '?')} s"
    return {"scenario": scenario, "scenario_hash": "", "scenario_version": "", "message": message,
            "events_count": 1, "events": [], "start_at": at, "stop_at": at, "capacity": 0, "leakspeed": "0",
            "simulated": False, "source": source,
            "decisions": [{"duration": f"{ban_s}s", "origin": origin, "scenario": scenario, "scope": scope,
                           "type": "ban", "value": value}]}


def send(url: str, machine_id: str, password: str, alerts: list[dict]) -> None:
    """Log in as the machine, then post ``alerts`` in batches; LapiError on the first failure."""
    answer = lapi.call(url, "/v1/watchers/login", {}, {"machine_id": machine_id, "password": password,
                                                       "scenarios": []})
    token = answer.get("token") if isinstance(answer, dict) else None
    if not isinstance(token, str) or not token.isprintable():
        raise lapi.LapiError("/v1/watchers/login: no token in the answer")
    for i in range(0, len(alerts), BATCH):
        lapi.call(url, "/v1/alerts", {"Authorization": f"Bearer {token}"}, alerts[i:i + BATCH])
