"""RuleSet → iptables-restore ``--noflush`` text (IPv4 and IPv6) and an ``ipset restore`` script. Pure.

Placement: the stateless chain goes to the **raw** table, jumped to from the top of
raw PREROUTING (before conntrack); the stateful chain goes to **filter**, jumped to
from the top of INPUT and FORWARD. Only nodeguard's own chains and its jump rules
are ever written; every line carries ``nodeguard:<id> <label>``.

Where iptables cannot say what the model says:
* ``iifname != {a, b} return`` becomes a dispatcher: the base chain holds
  ``-i a -g <base>-UPLINK`` per interface, and the rest of the rules live in ``<base>-UPLINK``;
* "rate over" is ``-m hashlimit --hashlimit-above`` (without ``--hashlimit-mode`` it is one
  global bucket: ``-m limit`` can only match *under* a rate);
* allowlists and trusted sources are ipsets (``hash:net``, ``hash:ip timeout``): per-rule CIDRs
  would cost a rule per CIDR per packet.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from .. import model as m
from .ids import chained_ids, comment

PREFIX = "NODEGUARD"
MAX_CHAIN = 28  # Felix's MaxChainNameLength: safe for both flavours
_BASE_NAMES = {m.STATELESS_CHAIN: "NODEGUARD-PRE", m.STATEFUL_CHAIN: "NODEGUARD-CONN"}
_HOOKS = {"stateless": ("raw", ("PREROUTING",)), "stateful": ("filter", ("INPUT", "FORWARD"))}
_UNITS = {"second": "sec", "minute": "min", "hour": "hour"}
_PROTO = {("icmp", 4): "icmp", ("icmpv6", 6): "ipv6-icmp"}


def chain_name(name: str) -> str:
    if name in _BASE_NAMES:
        return _BASE_NAMES[name]
    short = {"bogus-flags": "BOGUS", "icmp-flood": "ICMP", "syn-flood": "SYN"}.get(name, name.upper())
    full = f"{PREFIX}-{short}"
    if len(full) <= MAX_CHAIN:
        return full
    return f"{full[:MAX_CHAIN - 7]}-{hashlib.sha1(name.encode()).hexdigest()[:6].upper()}"


def ipset_name(set_name: str) -> str:
    return f"{PREFIX}-{set_name.upper()}"


def hashlimit_name(meter: str) -> str:
    """xt_hashlimit names are at most 15 characters; a hash keeps them unique and stable."""
    return "ng-" + hashlib.sha1(meter.encode()).hexdigest()[:10]


@dataclass
class Table:
    """What nodeguard owns in one iptables table of one family."""

    name: str
    chains: list[str] = field(default_factory=list)
    rules: list[tuple[str, str]] = field(default_factory=list)  # (chain, spec with comment)
    jumps: list[tuple[str, str]] = field(default_factory=list)  # (built-in chain, spec), inserted at 1


@dataclass
class Render:
    version: int
    tables: dict[str, Table]

    def rule_ids(self) -> dict[str, list[str]]:
        """chain → rule IDs in order (jumps under the built-in chain's name)."""
        out: dict[str, list[str]] = {}
        for t in self.tables.values():
            for chain in t.chains:
                out[chain] = []
            for chain, spec in t.rules:
                out[chain].append(spec_id(spec))
            for builtin, spec in t.jumps:
                out.setdefault(f"{t.name}/{builtin}", []).append(spec_id(spec))
        return out


def spec_id(spec: str) -> str:
    """The nodeguard id in a rendered rule spec."""
    return spec.split('--comment "nodeguard:', 1)[1].split(" ", 1)[0]


# --- the model, rendered ------------------------------------------------------------------
def render_ipt(rs: m.RuleSet, version: int) -> Render:
    rs = expand_icmp(rs)
    sets = {s.name: s for s in rs.sets}
    tables: dict[str, Table] = {}
    owner = _table_of_chains(rs)
    for chain in rs.chains:
        table = tables.setdefault(owner[chain.name], Table(owner[chain.name]))
        rules = [r for r in chain.rules if _applies(r, version)]
        name = chain_name(chain.name)
        if chain.hook and rules and isinstance(rules[0].matches[0], m.InterfaceNotIn):
            uplink = f"{name}-UPLINK"
            dispatch = [(f"-i {ifname} -g {uplink}", f"uplink {ifname}") for ifname in rules[0].matches[0].names]
            _add_chain(table, name, dispatch)
            _add_chain(table, uplink, [_rule(r, version, sets) for r in rules[1:]])
        else:
            _add_chain(table, name, [_rule(r, version, sets) for r in rules])
        if chain.hook:
            _, builtins = _HOOKS[chain.stage]
            for builtin in builtins:
                body = f"-j {name}"
                (jid,) = chained_ids(f"{table.name}/{builtin}", [body])
                table.jumps.append((builtin, f'-m comment --comment "{comment(jid, "jump to " + name)}" {body}'))
    return Render(version, tables)


def _add_chain(table: Table, name: str, rules: list[tuple[str, str]]) -> None:
    table.chains.append(name)
    bodies = [body for body, _label in rules]
    for (body, label), rid in zip(rules, chained_ids(name, bodies), strict=True):
        table.rules.append((name, f'-m comment --comment "{comment(rid, label)}" {body}'.rstrip()))


def _table_of_chains(rs: m.RuleSet) -> dict[str, str]:
    """Every chain lives in the table of the base chain that reaches it."""
    owner: dict[str, str] = {}
    for base in rs.base_chains:
        todo = [base.name]
        while todo:
            name = todo.pop()
            owner.setdefault(name, _HOOKS[base.stage][0])
            todo += [r.verdict.chain for r in rs.chain(name).rules if isinstance(r.verdict, (m.Jump, m.Goto))]
    return owner


def _versions(x: object) -> set[int]:
    if isinstance(x, m.Proto) and x.name in ("icmp", "icmpv6"):
        return {4} if x.name == "icmp" else {6}
    v = getattr(x, "version", None)
    return {v} if v in (4, 6) else {4, 6}


def _applies(rule: m.Rule, version: int) -> bool:
    return all(version in _versions(x) for x in rule.matches)


def _rule(rule: m.Rule, version: int, sets: dict[str, m.AddrSet]) -> tuple[str, str]:
    proto = _proto(rule, version)
    parts = [f"-p {proto}"] if proto else []
    for x in rule.matches:
        parts += _match(x, version, sets)
    parts.append(_target(rule))
    return " ".join(p for p in parts if p), rule.label


def _proto(rule: m.Rule, version: int) -> str | None:
    for x in rule.matches:
        if isinstance(x, m.Proto):
            return _PROTO.get((x.name, version), x.name)
        if isinstance(x, m.IcmpTypes):
            return "icmp" if x.version == 4 else "ipv6-icmp"
        if isinstance(x, m.TcpFlags):
            return "tcp"
        if isinstance(x, m.DstPorts):
            return x.proto
    return None


def _rate(r) -> str:
    return f"{r.count}/{_UNITS[r.unit]}"


def _match(x: object, version: int, sets: dict[str, m.AddrSet]) -> list[str]:
    if isinstance(x, (m.Family, m.Proto)):
        return []  # the family is the tool (iptables / ip6tables); the protocol went first
    if isinstance(x, m.IcmpTypes):  # one type per rule: see expand_icmp
        (icmp_type,) = x.types
        return [f"--icmp-type {icmp_type}" if x.version == 4 else f"--icmpv6-type {icmp_type}"]
    if isinstance(x, m.TcpFlags):
        mask = ",".join(f.upper() for f in x.mask)
        comp = ",".join(f.upper() for f in x.comp) or "NONE"
        return [f"--tcp-flags {mask} {comp}"]
    if isinstance(x, m.DstPorts):
        neg = "! " if x.negate else ""
        if len(x.ports) == 1:
            return [f"{neg}--dport {x.ports[0]}"]
        return [f"-m multiport {neg}--dports {','.join(map(str, x.ports))}"]
    if isinstance(x, m.SourceInSet):
        return [f"-m set --match-set {ipset_name(x.set)} src"]
    if isinstance(x, m.SourceNotInSet):
        return [f"-m set ! --match-set {ipset_name(x.set)} src"]
    if isinstance(x, m.CtStateNew):
        return ["-m conntrack --ctstate NEW"]
    if isinstance(x, m.Assured):
        return ["-m conntrack --ctstatus ASSURED --ctdir ORIGINAL"]
    if isinstance(x, m.RememberSource):
        return []  # it is the rule's target
    if isinstance(x, m.SourceRateOver):
        s = sets[x.meter]
        mask = f" --hashlimit-srcmask {m.V6_SOURCE_PREFIX}" if version == 6 else ""
        return [f"-m hashlimit --hashlimit-above {_rate(x.rate)} --hashlimit-burst {x.rate.burst} "
                f"--hashlimit-mode srcip{mask} --hashlimit-name {hashlimit_name(x.meter)} "
                f"--hashlimit-htable-size {s.size} --hashlimit-htable-max {s.size} "
                f"--hashlimit-htable-expire {s.timeout_s * 1000}"]
    if isinstance(x, m.RateOver):
        return [f"-m hashlimit --hashlimit-above {_rate(x.rate)} --hashlimit-burst {x.rate.burst} "
                f"--hashlimit-name {hashlimit_name(x.name)}"]
    if isinstance(x, (m.RateUnder, m.SharedRateUnder)):  # same name: one bucket (per family)
        return [f"-m hashlimit --hashlimit-upto {_rate(x.rate)} --hashlimit-burst {x.rate.burst_or(1)} "
                f"--hashlimit-name {hashlimit_name(x.name)}"]
    if isinstance(x, m.ToUserspace):
        return []  # it is the rule's target
    if isinstance(x, m.SourceConnsOver):
        mask = 32 if version == 4 else m.V6_SOURCE_PREFIX
        return [f"-m connlimit --connlimit-above {x.limit} --connlimit-mask {mask} --connlimit-saddr"]
    raise TypeError(f"no iptables rendering for {x!r}")


def _target(rule: m.Rule) -> str:
    remember = [x for x in rule.matches if isinstance(x, m.RememberSource)]
    if remember:
        return f"-j SET --add-set {ipset_name(remember[0].set)} src --exist"
    to_user = [x for x in rule.matches if isinstance(x, m.ToUserspace)]
    if to_user:
        u = to_user[0]
        if u.transport == "nfqueue":
            return f"-j NFQUEUE --queue-num {u.number}"
        return f'-j NFLOG --nflog-group {u.number} --nflog-prefix "ng:{u.group}" --nflog-size {u.snaplen}'
    v = rule.verdict
    if isinstance(v, m.Jump):
        return f"-j {chain_name(v.chain)}"
    if isinstance(v, m.Goto):
        return f"-g {chain_name(v.chain)}"
    return {m.Drop: "-j DROP", m.Return: "-j RETURN", m.Continue: ""}[type(v)]


def expand_icmp(rs: m.RuleSet) -> m.RuleSet:
    """iptables matches one ICMP type per rule: split multi-type rules (labels keep the type)."""
    chains = []
    for c in rs.chains:
        rules: list[m.Rule] = []
        for r in c.rules:
            icmp = [x for x in r.matches if isinstance(x, m.IcmpTypes)]
            if not icmp or len(icmp[0].types) == 1:
                rules.append(r)
                continue
            for t in icmp[0].types:
                matches = tuple(m.IcmpTypes(x.version, (t,)) if x is icmp[0] else x for x in r.matches)
                rules.append(m.Rule(matches, r.verdict, f"{r.label} type {t}"))
        chains.append(m.Chain(c.name, tuple(rules), c.hook, c.priority, c.stage))
    return m.RuleSet(tuple(chains), rs.sets, rs.interfaces, rs.table)


# --- text for the tools --------------------------------------------------------------------
@dataclass
class LiveTable:
    """What the kernel holds of ours in one table: chain names and our jump lines (save format)."""

    chains: list[str] = field(default_factory=list)
    jump_lines: list[str] = field(default_factory=list)  # "-A PREROUTING ... -j NODEGUARD-PRE"


def restore_text(render: Render | None, live: dict[str, LiveTable]) -> str:
    """An iptables-restore --noflush script: remove our old jumps and stale chains, write ours.

    ``render`` None writes nothing new: the uninstall script. One COMMIT per table; empty
    tables are skipped.
    """
    out: list[str] = []
    names = sorted(set(live) | (set(render.tables) if render else set()))
    for tname in names:
        want = render.tables.get(tname) if render else None
        have = live.get(tname, LiveTable())
        if not want and not have.chains and not have.jump_lines:
            continue
        lines = [f"*{tname}"]
        new_chains = want.chains if want else []
        stale = [c for c in have.chains if c not in new_chains]
        lines += [f":{c} - [0:0]" for c in new_chains + stale]  # declaring a chain flushes it
        lines += ["-D" + line[2:] for line in have.jump_lines]
        if want:
            lines += [f"-I {builtin} 1 {spec}" for builtin, spec in reversed(want.jumps)]
            lines += [f"-A {chain} {spec}" for chain, spec in want.rules]
        lines += [f"-X {c}" for c in stale]
        out += [*lines, "COMMIT"]
    return "\n".join(out) + "\n" if out else ""


def ipset_script(rs: m.RuleSet, existing: set[str], *, replace_allow: bool = True) -> str:
    """``ipset restore`` input: create our sets; swap the allowlists' contents in atomically."""
    lines = []
    for s in rs.sets:
        if s.kind not in ("allow", "trusted"):
            continue
        name, fam = ipset_name(s.name), "inet" if s.version == 4 else "inet6"
        if s.kind == "trusted":
            lines.append(f"create {name} hash:ip family {fam} timeout {s.timeout_s} maxelem {s.size} -exist")
            continue
        maxelem = max(65536, 2 * len(s.elements))
        if name not in existing or not replace_allow:
            lines.append(f"create {name} hash:net family {fam} maxelem {maxelem} -exist")
            lines += [f"add {name} {n} -exist" for n in s.elements]
            continue
        tmp = f"{name[:25]}-NEW"
        lines.append(f"create {tmp} hash:net family {fam} maxelem {maxelem} -exist")
        lines.append(f"flush {tmp}")
        lines += [f"add {tmp} {n} -exist" for n in s.elements]
        lines += [f"swap {tmp} {name}", f"destroy {tmp}"]
    return "\n".join(lines) + "\n" if lines else ""
