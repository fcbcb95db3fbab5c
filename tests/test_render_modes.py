"""Monitor mode, the sampler's odds and a re-apply onto a live table: pinned and checked without root.

Each golden is human-readable (nft: one command per line in nft's own words, every field kept; iptables:
the restore text) and each test also asserts what its golden must contain, so a golden rewritten by
``pytest --update-goldens`` after a regression cannot hide it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from guard import sampling_odds
from guard.apply import make_plan, read_state, sampling_settings, transaction
from guard.backend.nft import NftLive
from guard.fingerprints import of_nft
from guard.model.build import build_ruleset, sample_groups
from guard.model.plans import Priorities, SynproxyPlan
from guard.model.ruleset import RuleSet
from guard.model.verdicts import Drop, Queue, Return, Synproxy
from guard.policy.schema import Policy
from guard.render import ipt as render_ipt
from guard.render import nft as render_nft
from guard.sync import ipt as sync_ipt
from guard.sync import nft as sync_nft

GOLDEN = Path(__file__).resolve().parent / "golden"
SMALL = (GOLDEN / "small.yaml").read_text()
ODDS = {"syn-flood": 3, "icmp-flood": 10}  # 1 in 8 and 1 in 1024


def _merged(base: dict, patch: dict) -> dict:
    out = dict(base)
    for k, v in patch.items():
        out[k] = _merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _policy(patch: str = "") -> Policy:
    """small.yaml with ``patch`` (YAML) merged into it, key by key."""
    return Policy.model_validate(_merged(yaml.safe_load(SMALL), yaml.safe_load(patch) or {}))


def _ruleset(policy: Policy, transport: str = "nflog", odds: dict[str, int] | None = None) -> RuleSet:
    return build_ruleset(policy, tuple(policy.interfaces), Priorities(),
                               sampling_settings(policy, transport, odds), None)


def _iptables(policy: Policy) -> Policy:
    """The policy on the iptables backend, whose layout differs (it counts no invalid-rst source)."""
    return policy.model_copy(update={"backend": "iptables"})


def _nft_commands(rs: RuleSet, live: NftLive | None = None) -> list[dict]:
    return sync_nft.build(render_nft.render_nft(rs), live or NftLive()).json()["nftables"]


def _ipt_text(rs: RuleSet) -> str:
    renders = {v: render_ipt.render_ipt(rs, v) for v in (4, 6)}
    return sync_ipt.build("nft", renders, render_ipt.ipsets(rs), {}, {}, {}).text()


# --- nft JSON, one command per line in nft's words -----------------------------------------
def _value(v) -> str:
    if isinstance(v, dict) and len(v) == 1:
        (key, body), = v.items()
        if key == "&":
            return " & ".join(_value(x) for x in body)
        if key == "set" and isinstance(body, list):
            return "{ " + ", ".join(_value(x) for x in body) + " }"
        if key == "prefix":
            return f"{body['addr']}/{body['len']}"
        if key in ("goto", "jump") and set(body) == {"target"}:
            return f"{key} {body['target']}"
        if isinstance(body, dict):
            return " ".join([key, *(f"{k} {_value(x)}" for k, x in body.items())])
        return key if body is None else f"{key} {_value(body)}"
    if isinstance(v, list):
        return "{ " + ", ".join(_value(x) for x in v) + " }"
    if isinstance(v, (str, int, bool)) or v is None:
        return str(v)
    return json.dumps(v, sort_keys=True)  # anything else: as it is, nothing lost


def _statement(e: dict) -> str:
    (key, body), = e.items()
    if key == "match":
        return f"{_value(body['left'])} {body['op']} {_value(body['right'])}"
    if key == "set" and isinstance(body, dict) and "op" in body:
        stmts = " ".join(_statement(s) for s in body.get("stmt", []))
        return f"{body['op']} {body['set']} {{ {_value(body['elem'])}{' ' + stmts if stmts else ''} }}"
    if key == "limit" and isinstance(body, str):
        return f"limit name {body}"
    return _value(e)


def _readable(commands: list[dict]) -> str:
    """One line per command: verb, object kind, name, then every other field (a rule: its statements)."""
    lines = []
    for cmd in commands:
        (verb, obj), = cmd.items()
        (kind, body), = obj.items()
        name = body.get("name") or body.get("chain")
        rest = {k: v for k, v in body.items() if k not in ("family", "table", "name", "chain", "expr", "comment")}
        text = f"{verb} {kind} {name}"
        if kind == "rule":
            text += ": " + "; ".join(_statement(e) for e in body["expr"]) + f"  # {body['comment']}"
        elif kind == "element":
            text += " " + _value(body["elem"])
        elif rest:
            text += " { " + "; ".join(f"{k} {_value(v)}" for k, v in rest.items()) + " }"
        lines.append(text)
    return "\n".join(lines) + "\n"


def test_the_readable_form_keeps_every_field():
    """The goldens below are only as good as this printer: nothing it is given may vanish from its line."""
    cmds = _nft_commands(_ruleset(_policy("mode: monitor\n"), odds=ODDS)) + \
        _nft_commands(_ruleset(_policy(), "nfqueue", ODDS))
    for cmd, line in zip(cmds, _readable(cmds).splitlines(), strict=True):
        atoms = re.findall(r'"([^"{}\[\],:]*)"|(-?\d+)', json.dumps(cmd))
        for s, n in atoms:
            atom = s or n
            if atom not in ("family", "table", "name", "chain", "expr", "comment", "inet", "nodeguard", "match",
                            "op", "left", "right", "stmt", "elem", "prefix", "addr", "len", "set", "target"):
                assert atom in line, (atom, line)


# --- monitor mode ----------------------------------------------------------------------------
def _monitor_invariants(nft_text: str, ipt_text: str, sampled: bool = True) -> None:
    """A monitor-mode policy never drops, queues or proxies a packet: every condemned packet ends in a
    ``monitor-<group>`` chain that counts, samples over NFLOG ("ngm:" prefix) and returns."""
    assert not re.search(r"(^|; )(drop|queue|synproxy|reject)\b", nft_text, re.M), nft_text
    assert not re.search(r"-j (DROP|NFQUEUE|SYNPROXY|REJECT)\b", ipt_text), ipt_text
    groups = sample_groups(_policy())
    for g in groups:
        chain = [ln for ln in nft_text.splitlines() if ln.startswith(f"add rule monitor-{g}:")]
        assert chain and chain[-1].startswith(f"add rule monitor-{g}: counter packets 0 bytes 0; return  #"), chain
        assert any(f"log prefix ngm:{g}  group 4714 snaplen 128" in ln for ln in chain) == sampled, chain
        ipt = [ln for ln in ipt_text.splitlines() if ln.startswith("-A ") and f' would drop {g}"' in ln]
        assert ipt and all(ln.endswith("-j RETURN") for ln in ipt), ipt
    assert "goto monitor-" in nft_text and "goto sample-" not in nft_text


@pytest.mark.parametrize("transport", ["nflog", "nfqueue"])
def test_monitor_mode_is_pinned_and_never_drops(transport, golden):
    """One golden for both transports: monitor mode samples over NFLOG whatever the transport (a queued
    packet would be dropped by a missing sampler)."""
    rs = _ruleset(_policy("mode: monitor\n"), transport)
    nft_text = golden("monitor.nft.txt", _readable(_nft_commands(rs)))
    ipt_text = golden("monitor.iptables.txt", _ipt_text(_ruleset(_iptables(_policy("mode: monitor\n")), transport)))
    _monitor_invariants(nft_text, ipt_text)


@pytest.mark.parametrize("transport", ["nflog", "nfqueue", None])
def test_no_rule_of_a_monitor_mode_policy_can_drop(transport):
    """The model itself: from a monitor-mode condemning rule, every chain it can reach returns (a drop,
    queue or SYNPROXY anywhere in a monitor-mode ruleset would drop packets the operator only watches)."""
    policy = _policy("mode: monitor\nsyn:\n  synproxy:\n    forwarded: true\n")
    cfg = policy.syn.synproxy
    synproxy = SynproxyPlan((22,), (22,), 1460, 1440, 7, True, cfg.engage_over, cfg.hold_s)
    sampling = sampling_settings(policy, transport, ODDS) if transport else None
    rs = build_ruleset(policy, tuple(policy.interfaces), Priorities(), sampling, synproxy)
    condemning = [r for c in rs.chains for r in c.rules if r.group]
    assert condemning and {r.mode for r in condemning} == {"monitor"}
    terminal = [(c.name, r.label) for c in rs.chains for r in c.rules
                if isinstance(r.verdict, (Drop, Queue, Synproxy))]
    assert terminal == []
    for c in rs.chains:
        if c.name.startswith("monitor-"):
            assert isinstance(c.rules[-1].verdict, Return) and not c.rules[-1].matches, c
    _monitor_invariants(_readable(_nft_commands(rs)), _ipt_text(rs), sampled=transport is not None)


# --- the sampler's odds ----------------------------------------------------------------------
def sampling_lines(text: str) -> list[str]:
    """The lines of a rendering but the trusted set's refresh, which also picks packets at random."""
    return [ln for ln in text.splitlines() if "refresh handshake" not in ln]


@pytest.mark.parametrize("transport", ["nflog", "nfqueue"])
def test_sampling_odds_are_pinned_with_their_exact_numbers(transport, golden):
    rs = _ruleset(_policy(), transport, ODDS)
    nft_text = golden(f"odds.{transport}.nft.txt", _readable(_nft_commands(rs)))
    ipt_text = golden(f"odds.{transport}.iptables.txt", _ipt_text(_ruleset(_iptables(_policy()), transport, ODDS)))
    sample = {g: [ln for ln in nft_text.splitlines() if ln.startswith(f"add rule sample-{g}: ")]
              for g in sample_groups(_policy())}
    way = "queue num" if transport == "nfqueue" else "log prefix ng:"
    for group, k in (("syn-flood", 3), ("icmp-flood", 10), ("limit-dns", 0), ("bogus-flags", 0)):
        (line,) = [ln for ln in sample[group] if way in ln]
        odds = f"numgen mode random mod {2 ** k} offset 0 == 0; limit name sample-{group}-"
        assert (odds in line) == (k > 0), line  # first, before the buckets: uniform per packet
        probability = f"-m statistic --mode random --probability {1 / 2 ** k:.10f} "
        ipt = [ln for ln in ipt_text.splitlines() if ln.startswith("-A ") and f' sample {group} via {transport}"' in ln]
        assert len(ipt) == 2 and all((probability in ln) == (k > 0) for ln in ipt), ipt  # v4 and v6
    assert sum("numgen mode random" in ln for ln in sampling_lines(nft_text)) == 2
    assert sum("--mode random" in ln for ln in sampling_lines(ipt_text)) == 2 * 2  # v4 and v6 rules


def _assert_syn_flood_sampled_1_in_32(policy: Policy, odds: dict[str, int] | None) -> None:
    """make_plan(..., odds=odds) renders syn-flood's samples at 1 in 32, and no other group's at random."""
    for backend, odds_text in (("nft", "numgen mode random mod 32 offset 0 == 0"),
                               ("iptables", "-m statistic --mode random --probability 0.0312500000 ")):
        plan = make_plan(policy.model_copy(update={"backend": backend}), None,
                         flavour=None if backend == "nft" else ("nft", "given"), odds=odds)
        tx = transaction(plan, read_state(plan, None))  # what `nodeguard check` prints
        text = _readable(tx.json()["nftables"]) if backend == "nft" else tx.text()
        lines = [ln for ln in text.splitlines() if odds_text in ln]
        assert len(lines) == (1 if backend == "nft" else 2) and all("sample syn-flood via" in ln for ln in lines), \
            f"{backend}: the sample rules with {odds_text!r}: {lines}"
        assert sum(ln.count("random") for ln in sampling_lines(text)) == len(lines), \
            "only the group with odds samples at random"


def _odds_policy(tmp_path: Path) -> Policy:
    return _policy(f"watcher:\n  state_file: {tmp_path}/watch.json\nsyn:\n  synproxy:\n    ports: []\n")


def test_odds_in_the_odds_file_reach_the_rendered_ruleset(tmp_path):
    """What apply and `nodeguard sample` render: the odds file (sampling_odds.py) beside the state file."""
    policy = _odds_policy(tmp_path)
    sampling_odds.save(sampling_odds.path_for(policy), {"syn-flood": 5})
    _assert_syn_flood_sampled_1_in_32(policy, None)


def test_odds_passed_to_make_plan_are_rendered_and_the_odds_file_is_not_read(tmp_path):
    """The daemon's watcher renders with the odds it holds (issue 17): no file, or another one on
    disk (written by someone else), changes its render."""
    policy = _odds_policy(tmp_path)
    assert not sampling_odds.path_for(policy).exists()
    _assert_syn_flood_sampled_1_in_32(policy, {"syn-flood": 5})
    sampling_odds.save(sampling_odds.path_for(policy), {"syn-flood": 2, "icmp-flood": 10})
    _assert_syn_flood_sampled_1_in_32(policy, {"syn-flood": 5})


# --- a changed policy re-applied onto a live table ---------------------------------------------
def _as_listed(objs: render_nft.NftObjects) -> NftLive:
    """What read_live gives after ``objs`` was loaded: the kernel lists the definitions it was sent
    (plus handles; the fields sync compares are type, size, timeout, flags, rate, per, burst, inv, hook, prio)."""
    handle = iter(range(1, 10_000))
    return NftLive(True, {c["name"]: {**c, "handle": next(handle)} for c in objs.chains},
                   {s["name"]: {**s, "handle": next(handle)} for s in objs.sets},
                   {x["name"]: {**x, "handle": next(handle)} for x in objs.limits},
                   tuple({**r, "handle": next(handle)} for r in objs.rules),
                   {n: list(e) for n, e in objs.elements.items()})


CHANGED = """
icmp:
  per_source: 20/second
allow:
  cidrs: [10.0.0.0/8, "fd00:10::/56", 192.168.0.0/16]
limits:
  - name: dns
    protocol: udp
    ports: [53]
    per_source: 100/second
    rate: 2000/second
  - name: ntp
    protocol: udp
    ports: [123]
    per_source: 50/second
"""


def _reapply() -> tuple[render_nft.NftObjects, render_nft.NftObjects, list[dict]]:
    old = render_nft.render_nft(_ruleset(_policy()))
    new = render_nft.render_nft(_ruleset(_policy(CHANGED)))
    return old, new, sync_nft.build(new, _as_listed(old)).json()["nftables"]


def test_reapplying_a_changed_policy_is_pinned(golden):
    _old, _new, cmds = _reapply()
    text = golden("reapply.nft.txt", _readable(cmds))
    assert "delete set icmp-src-v4-" in text and "add set icmp-src-v4-" in text  # its rate is in its name
    assert "add element allow-v4 { 10.0.0.0/8, 192.168.0.0/16 }" in text


def test_reapplying_keeps_every_set_and_limit_whose_definition_is_unchanged():
    """State is the sets' elements (meters, trusted sources, connection counts, bans, counts) and the
    named buckets: a re-apply must not delete or re-add an unchanged one, nor flush its elements."""
    old, new, cmds = _reapply()
    old_sets, new_sets = {s["name"] for s in old.sets}, {s["name"] for s in new.sets}
    old_limits, new_limits = {x["name"] for x in old.limits}, {x["name"] for x in new.limits}
    kept_sets = {n for n in old_sets & new_sets if not n.startswith(("allow-", "synproxy-ports-"))}
    assert len(kept_sets) >= 20 and "icmp-src-v4" not in {n.rsplit("-", 1)[0] for n in kept_sets}
    touched = {(verb, kind, body.get("name")) for cmd in cmds for verb, obj in cmd.items() for kind, body in obj.items()}
    for name in kept_sets:
        assert not {("delete", "set", name), ("add", "set", name), ("flush", "set", name)} & touched, name
    for name in old_limits & new_limits:
        assert not {("delete", "limit", name), ("add", "limit", name)} & touched, name
    # what did change goes away and comes back under its new name; nothing else is deleted
    assert {(k, n) for v, k, n in touched if v == "delete"} == \
        {("set", n) for n in old_sets - new_sets} | {("limit", n) for n in old_limits - new_limits}
    assert {n for v, k, n in touched if v == "add" and k == "set"} == new_sets - old_sets
    # allowlists are configuration: the changed one is refilled, in the same transaction
    assert {n for v, k, n in touched if v == "flush" and k == "set"} == {"allow-v4"}
    # the whole table again, in one transaction, with the live state as the start
    assert cmds[0] == {"add": {"table": render_nft.table_ref()}}


def test_reapplying_the_same_policy_touches_no_set_or_limit():
    objs = render_nft.render_nft(_ruleset(_policy()))
    cmds = sync_nft.build(objs, _as_listed(objs)).json()["nftables"]
    kinds = {(verb, kind) for cmd in cmds for verb, obj in cmd.items() for kind in obj}
    assert not {("delete", "set"), ("add", "set"), ("flush", "set"), ("add", "element"), ("delete", "limit"),
                ("add", "limit")} & kinds, sorted(kinds)


def test_a_new_auto_port_set_is_its_elements_added_and_deleted_nothing_else():
    """``ports: auto`` follows listeners any local user opens: a new set costs only its difference,
    not a flush and refill of thousands of ports, and no chain, set or limit is touched."""
    policy = _policy()
    cfg = policy.syn.synproxy

    def objs(v4: tuple[int, ...]) -> render_nft.NftObjects:
        sp = SynproxyPlan(v4, (22,), 1460, 1440, 7, False, cfg.engage_over, cfg.hold_s)
        return render_nft.render_nft(build_ruleset(policy, tuple(policy.interfaces), Priorities(),
                                                   sampling_settings(policy, "nflog"), sp))

    old, new = objs((22, *range(20000, 27500, 2))), objs((22, 443, *range(20001, 27500, 2)))
    live = _as_listed(old)
    cmds = sync_nft.build(new, live, of_nft(live.rules)).json()  # the watcher's record of our rules' bodies
    ref = {"family": "inet", "table": "nodeguard", "name": "synproxy-ports-v4"}
    assert cmds["nftables"] == [
        {"add": {"table": render_nft.table_ref()}},
        {"delete": {"element": {**ref, "elem": list(range(20000, 27500, 2))}}},
        {"add": {"element": {**ref, "elem": [443, *range(20001, 27500, 2)]}}}]
