"""Prototype renderer: the lean hot-path table for nodeguard's default policy, in nft text.

Research prototype for docs/hotpath.md (branch hotpath-research); guard/ is not touched.
The numbers are the default policy's (rules/default.yaml); the layout is what the rule
model should produce:

* ``ingress`` (inet family, ingress hook of each protected device, before defrag): drops
  banned sources (IPv4 host, IPv6 /64) and nothing else. One hash lookup.
* ``filter-prerouting`` (-350, after defrag, before conntrack): ONE interval-map lookup on
  ``iifname . saddr . l4proto`` answers "protected interface, not allowlisted, which
  protocol" and jumps straight to the protocol's chain. TCP: ONE lookup of the flag byte
  in a 64-entry verdict map sends bogus combinations to their drop chain and pure SYNs to
  the SYN meter; every other TCP packet (established traffic) stops there.
* ``filter-conntrack`` (-190): the same gate, TCP only: connlimit for new connections,
  "remember handshake" for assured ones.
* per-source excess goes through ``over-<group>-v<n>`` (escalation: a source continuously
  over its limit for ``after_s`` is added to ``banned-v<n>``), then ``drop-<group>``
  (capped sample to NFLOG, named counter, drop). Counters exist only where they are read.

Every rule carries ``nodeguard:<id> <label>`` (ids chained per chain as guard/render/ids.py).
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass, field

V6_MASK = "ffff:ffff:ffff:ffff::"
OVERLAY_PORTS = (4789, 6081, 8472, 51820, 51821)
FLAGS6 = ("fin", "syn", "rst", "psh", "ack", "urg")  # bit i = 1 << i (fin=0x01 ... urg=0x20)


@dataclass
class Params:
    interfaces: tuple[str, ...]
    allow4: tuple[str, ...] = ()
    allow6: tuple[str, ...] = ()
    escalate: bool = True
    after_s: int = 3  # a source continuously over a per-source limit this long is banned
    gap_s: int = 1  # a pause in drops longer than this ends the episode (hysteresis)
    ban_s: int = 600
    ban_size: int = 65536
    meter_size: int = 65536
    meter_timeout_s: int = 60
    trusted_s: int = 3600
    ingress: str = "inet"  # "inet": ban chain in this table's ingress hook; "none"
    stateless_at: str = "prerouting"  # "prerouting" (-350, after defrag) or "ingress" (the gate in the ingress chain too)
    gate: str = "concat"  # "concat": one iifname.saddr.l4proto map; "simple": iifname map + allow sets + l4 map
    sample: bool = True
    all_counters: bool = False  # a counter on every rule (to measure what counters cost)
    nflog_group: int = 4714
    table: str = "nodeguard"


# --- helpers ----------------------------------------------------------------------------
def _complement(cidrs: tuple[str, ...], version: int) -> list[str]:
    """Address ranges NOT covered by ``cidrs`` (interval maps with concatenations may not overlap)."""
    full = ipaddress.ip_network("0.0.0.0/0" if version == 4 else "::/0")
    nets = sorted(ipaddress.collapse_addresses(ipaddress.ip_network(c) for c in cidrs if ipaddress.ip_network(c).version == version))
    out, start = [], int(full.network_address)
    top = int(full.broadcast_address)
    cls = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
    for n in nets:
        if int(n.network_address) > start:
            out.append((start, int(n.network_address) - 1))
        start = int(n.broadcast_address) + 1
    if start <= top:
        out.append((start, top))
    return [f"{cls(a)}-{cls(b)}" for a, b in out]


def _flag_value_name(v: int) -> str:
    names = [f for i, f in enumerate(FLAGS6) if v >> i & 1]
    return " | ".join(names) if names else "0x0"


def bogus(v: int) -> str | None:
    """Today's five bogus-flag rules, as a predicate on the low six flag bits."""
    fin, syn, rst, psh, ack, urg = (v >> i & 1 for i in range(6))
    if v == 0:
        return "null"
    if fin and psh and urg:
        return "xmas"
    if syn and fin:
        return "syn+fin"
    if syn and rst:
        return "syn+rst"
    if fin and not ack:
        return "fin without ack"
    return None


def pure_syn(v: int) -> bool:
    """``tcp flags & (fin|syn|rst|ack) == syn`` (psh/urg may be set), as today's syn-flood jump."""
    return v & 0x17 == 0x02


@dataclass
class Chain:
    name: str
    head: str = ""  # "type filter hook ..." for base chains
    rules: list[tuple[str, str]] = field(default_factory=list)  # (body, label)

    def add(self, body: str, label: str) -> None:
        self.rules.append((body, label))


def _ids(chain: str, bodies: list[str]) -> list[str]:
    previous, out = chain, []
    for body in bodies:
        previous = hashlib.sha256(f"{previous}\n{body}".encode()).hexdigest()[:16]
        out.append(previous)
    return out


# --- the table ---------------------------------------------------------------------------
def render(p: Params) -> str:
    cnt = "counter " if p.all_counters else ""
    objs: list[str] = []
    sets: list[str] = []
    chains: list[Chain] = []
    groups = ["bogus-flags", "icmp-flood", "syn-flood", "limit-udp-per-source", "conn-limit"]

    # named counters: what status/sampler read (one object each; cheaper to list than rules)
    for g in groups:
        objs.append(f"\tcounter drop-{g} {{\n\t\tcomment \"packets condemned by {g}\"\n\t}}")
    if p.escalate:
        objs.append("\tcounter drop-banned {\n\t\tcomment \"packets of banned sources dropped at ingress\"\n\t}")
        objs.append("\tcounter bans {\n\t\tcomment \"sources added to banned-v4/v6\"\n\t}")
    if p.sample:
        objs.append("\tlimit sample-all {\n\t\trate 1000/second burst 1000 packets\n\t}")

    def dyn(name: str, typ: str, size: int, timeout: int | None, extra: str = "") -> None:
        t = f" timeout {timeout}s;" if timeout else ""
        flags = "dynamic,timeout" if timeout else "dynamic"
        sets.append(f"\tset {name} {{\n\t\ttype {typ}; size {size}; flags {flags};{t}{extra}\n\t}}")

    # --- allowlist + interface + protocol gate -------------------------------------------
    proto_chain4 = {"tcp": "tcp4", "udp": "udp4", "icmp": "icmp4"}
    proto_chain6 = {"tcp": "tcp6", "udp": "udp6", "ipv6-icmp": "icmp6"}
    if p.gate == "concat":
        for version, protos, saddr in ((4, proto_chain4, "ipv4_addr"), (6, proto_chain6, "ipv6_addr")):
            ranges = _complement(p.allow4 if version == 4 else p.allow6, version)
            for mapname, only in ((f"gate-v{version}", None), (f"gate-ct-v{version}", "tcp")):
                elems = []
                for ifn in p.interfaces:
                    for r in ranges:
                        for proto, target in protos.items():
                            if only and proto != only:
                                continue
                            dest = target if not only else f"ct{version}"
                            elems.append(f"\"{ifn}\" . {r} . {proto} : goto {dest}")
                body = ",\n\t\t\t     ".join(elems)
                sets.append(f"\tmap {mapname} {{\n\t\ttype ifname . {saddr} . inet_proto : verdict; flags interval;\n"
                            f"\t\telements = {{ {body} }}\n\t}}")
    else:
        for version, cidrs in ((4, p.allow4), (6, p.allow6)):
            typ = "ipv4_addr" if version == 4 else "ipv6_addr"
            elems = f"\n\t\telements = {{ {', '.join(cidrs)} }}" if cidrs else ""
            sets.append(f"\tset allow-v{version} {{\n\t\ttype {typ}; flags interval;{elems}\n\t}}")

    # --- dynamic sets ----------------------------------------------------------------------
    for version in (4, 6):
        typ = "ipv4_addr" if version == 4 else "ipv6_addr"
        for meter in ("icmp-src", "syn-src", "udp-src"):
            dyn(f"{meter}-v{version}", typ, p.meter_size, p.meter_timeout_s)
        dyn(f"trusted-v{version}", typ, p.meter_size, p.trusted_s)
        dyn(f"conn-0-v{version}", typ, p.meter_size, None)
        if p.escalate:
            dyn(f"banned-v{version}", typ, p.ban_size, p.ban_s)
            dyn(f"over-v{version}", typ, p.meter_size, p.gap_s)
            dyn(f"episode-v{version}", typ, p.meter_size, p.after_s)

    def key(version: int) -> str:
        return "ip saddr" if version == 4 else f"ip6 saddr & {V6_MASK}"

    def saddr(version: int) -> str:
        return "ip saddr" if version == 4 else "ip6 saddr"

    # --- ingress: bans (and, with stateless_at=ingress, the whole stateless part) -----------
    if (p.escalate and p.ingress == "inet") or p.stateless_at == "ingress":
        devs = f"device \"{p.interfaces[0]}\"" if len(p.interfaces) == 1 else \
            "devices = { " + ", ".join(f"\"{i}\"" for i in p.interfaces) + " }"
        c = Chain("ingress", f"type filter hook ingress {devs} priority -500; policy accept;")
        if p.escalate:
            c.add("ip saddr @banned-v4 counter name \"drop-banned\" drop", "banned v4 source")
            c.add(f"ip6 saddr & {V6_MASK} @banned-v6 counter name \"drop-banned\" drop", "banned v6 /64")
        chains.append(c)

    # --- stateless base chain -------------------------------------------------------------
    if p.stateless_at == "ingress":
        c = chains[-1]  # non-first fragments: no L4 match, so they pass on to defrag (their first fragment was metered)
    else:
        c = Chain("filter-prerouting", "type filter hook prerouting priority -350; policy accept;")
    if p.gate == "simple" and p.stateless_at == "ingress":  # the chain is per device: no interface test
        c.add(f"ip saddr @allow-v4 {cnt}return", "allowlisted v4")
        c.add(f"ip6 saddr @allow-v6 {cnt}return", "allowlisted v6")
        c.add(f"meta nfproto . meta l4proto {cnt}vmap {{ ipv4 . tcp : goto tcp4, ipv4 . udp : goto udp4, ipv4 . icmp : goto icmp4, "
              f"ipv6 . tcp : goto tcp6, ipv6 . udp : goto udp6, ipv6 . ipv6-icmp : goto icmp6 }}", "by family and protocol")
    elif p.gate == "concat":
        c.add(f"iifname . ip saddr . meta l4proto {cnt}vmap @gate-v4", "gate v4: protected, not allowlisted, by protocol")
        c.add(f"iifname . ip6 saddr . meta l4proto {cnt}vmap @gate-v6", "gate v6: protected, not allowlisted, by protocol")
    else:
        ifs = ", ".join(f"\"{i}\" : goto uplink" for i in p.interfaces)
        c.add(f"iifname {cnt}vmap {{ {ifs} }}", "protected interfaces")
    if c not in chains:
        chains.append(c)
    if p.gate != "concat" and p.stateless_at != "ingress":
        c = Chain("uplink")
        c.add(f"ip saddr @allow-v4 {cnt}return", "allowlisted v4")
        c.add(f"ip6 saddr @allow-v6 {cnt}return", "allowlisted v6")
        c.add(f"meta nfproto . meta l4proto {cnt}vmap {{ ipv4 . tcp : goto tcp4, ipv4 . udp : goto udp4, ipv4 . icmp : goto icmp4, "
              f"ipv6 . tcp : goto tcp6, ipv6 . udp : goto udp6, ipv6 . ipv6-icmp : goto icmp6 }}", "by family and protocol")
        chains.append(c)

    def condemn(group: str) -> str:
        return f"goto drop-{group}"

    def over(group: str, version: int) -> str:
        return f"goto over-{group}-v{version}" if p.escalate else condemn(group)

    for version in (4, 6):
        # TCP: one flag-byte lookup; established traffic stops here
        elems = []
        for v in range(64):
            if bogus(v):
                elems.append(f"{_flag_value_name(v)} : goto drop-bogus-flags")
            elif pure_syn(v):
                elems.append(f"{_flag_value_name(v)} : goto syn{version}")
        c = Chain(f"tcp{version}")
        c.add(f"tcp flags & (fin | syn | rst | psh | ack | urg) {cnt}vmap {{ " + ", ".join(elems) + " }",
              "bogus flags to drop, pure SYN to syn meter, the rest passes")
        chains.append(c)

        c = Chain(f"syn{version}")
        c.add(f"update @syn-src-v{version} {{ {key(version)} limit rate over 200/second burst 400 packets }} {cnt}{over('syn-flood', version)}",
              f"syn-flood per-source v{version}")
        c.add(f"{saddr(version)} @trusted-v{version} {cnt}return", f"trusted v{version} skips backstop")
        c.add(f"limit rate over 5000/second burst 10000 packets {cnt}{condemn('syn-flood')}", "syn-flood backstop")
        chains.append(c)

        c = Chain(f"udp{version}")
        c.add(f"udp dport {{ {', '.join(map(str, OVERLAY_PORTS))} }} {cnt}return", "overlay ports never limited")
        c.add(f"update @udp-src-v{version} {{ {key(version)} limit rate over 2000/second burst 4000 packets }} {cnt}{over('limit-udp-per-source', version)}",
              f"limit-udp-per-source per-source v{version}")
        c.add(f"limit rate over 200000/second burst 400000 packets {cnt}{condemn('limit-udp-per-source')}", "limit-udp-per-source backstop")
        chains.append(c)

        icmp = "icmp" if version == 4 else "icmpv6"
        c = Chain(f"icmp{version}")
        c.add(f"{icmp} type != echo-request {cnt}return", "only echo-request is limited (errors, ND, MLD never)")
        c.add(f"update @icmp-src-v{version} {{ {key(version)} limit rate over 10/second burst 20 packets }} {cnt}{over('icmp-flood', version)}",
              f"icmp-flood per-source v{version}")
        c.add(f"limit rate over 100/second burst 200 packets {cnt}{condemn('icmp-flood')}", "icmp-flood backstop")
        chains.append(c)

    # --- stateful base chain (-190) --------------------------------------------------------
    c = Chain("filter-conntrack", "type filter hook prerouting priority -190; policy accept;")
    if p.gate == "concat":
        c.add(f"iifname . ip saddr . meta l4proto {cnt}vmap @gate-ct-v4", "gate v4 tcp")
        c.add(f"iifname . ip6 saddr . meta l4proto {cnt}vmap @gate-ct-v6", "gate v6 tcp")
    else:
        ifs = ", ".join(f"\"{i}\" : goto uplink-ct" for i in p.interfaces)
        c.add(f"iifname {cnt}vmap {{ {ifs} }}", "protected interfaces")
    chains.append(c)
    if p.gate != "concat":
        c = Chain("uplink-ct")
        c.add(f"ip saddr @allow-v4 {cnt}return", "allowlisted v4")
        c.add(f"ip6 saddr @allow-v6 {cnt}return", "allowlisted v6")
        c.add(f"meta nfproto . meta l4proto {cnt}vmap {{ ipv4 . tcp : goto ct4, ipv6 . tcp : goto ct6 }}", "tcp by family")
        chains.append(c)
    for version in (4, 6):
        c = Chain(f"ct{version}")
        c.add(f"ct state new tcp dport {{ 80, 443 }} add @conn-0-v{version} {{ {key(version)} ct count over 256 }} {cnt}{condemn('conn-limit')}",
              f"conn-0 over 256 connections v{version}")
        c.add(f"ct direction original ct status assured {saddr(version)} != @trusted-v{version} "
              f"add @trusted-v{version} {{ {saddr(version)} }} {cnt}".rstrip(), f"remember handshake v{version}")
        chains.append(c)

    # --- escalation ------------------------------------------------------------------------
    if p.escalate:
        for group in ("icmp-flood", "syn-flood", "limit-udp-per-source"):
            for version in (4, 6):
                k, s = key(version), saddr(version)
                c = Chain(f"over-{group}-v{version}")
                c.add(f"{k} @over-v{version} {k} @episode-v{version} update @over-v{version} {{ {k} }} {cnt}{condemn(group)}",
                      "over-limit episode goes on")
                c.add(f"{k} @over-v{version} {s} != @trusted-v{version} add @banned-v{version} {{ {k} }} "
                      f"counter name \"bans\" {condemn(group)}", f"over for after_s without a pause: ban v{version}")
                c.add(f"update @episode-v{version} {{ {k} }} update @over-v{version} {{ {k} }} {cnt}{condemn(group)}",
                      "new over-limit episode (or one after a pause)")
                chains.append(c)

    # --- condemned: capped sample, count, drop ---------------------------------------------
    for group in groups:
        c = Chain(f"drop-{group}")
        if p.sample:
            c.add(f"limit rate 200/second burst 200 packets limit name \"sample-all\" log prefix \"ng:{group} \" "
                  f"group {p.nflog_group} snaplen 128", f"sample {group} via nflog")
        c.add(f"counter name \"drop-{group}\" drop", f"drop {group}")
        chains.append(c)

    out = [f"table inet {p.table} {{"]
    out += objs
    out += sets
    for ch in chains:
        lines = [f"\tchain {ch.name} {{"]
        if ch.head:
            lines.append(f"\t\t{ch.head}")
        bodies = [b for b, _ in ch.rules]
        for (body, label), rid in zip(ch.rules, _ids(ch.name, bodies)):
            lines.append(f"\t\t{body} comment \"nodeguard:{rid} {label}\"")
        lines.append("\t}")
        out.append("\n".join(lines))
    out.append("}")
    return "\n\n".join(out) + "\n"


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--interfaces", default="eth0")
    ap.add_argument("--allow", default="10.96.0.0/12,10.244.0.0/16,fd00:10::/56")
    ap.add_argument("--no-escalate", action="store_true")
    ap.add_argument("--gate", default="concat", choices=["concat", "simple"])
    a = ap.parse_args()
    allow = [x for x in a.allow.split(",") if x]
    print(render(Params(tuple(a.interfaces.split(",")), tuple(x for x in allow if ":" not in x),
                        tuple(x for x in allow if ":" in x), escalate=not a.no_escalate, gate=a.gate)), end="")
