"""The kernel's counters of condemned packets per rule group, and meter fill, read cheaply.

A rule condemns for a group when the model says so (``model.Rule.group``, set by the builder's
``condemn()``): with sampling it goes to ``sample-<group>``, without it drops. Every condemned
packet passes exactly one such rule, so the sum of those rules' counters is the group's drops.

* nft: one netlink dump of the table's rules (``rule_counters``); a live rule is matched to its
  model rule by the id in its comment (the render gives model rule i of a chain the i-th id).
  Not libnftables: nft 1.0.6 fetches every set element for any listing, terse or not, which
  costs ~0.5 s with one full 65536-entry meter (measured).
* iptables: ``*-save -c`` per family; a live rule is matched by chain and label, both taken
  from the model (the render writes the label into the comment; a per-source meter's extra
  admission line has its own label and counts arrivals, not drops).

Meter fill: ``status.collect`` lists every element through libnftables JSON (~1.5 s for one
full 65536-entry meter). ``nft_set_sizes`` dumps the elements over raw netlink and only counts
them; the kernel's side of that dump still costs ~0.3 s for such a meter, so callers cache it.
"""

from __future__ import annotations

import os
import socket
import struct

from .apply import Plan
from .backend.ipt import Ipt, Ipset
from .backend.nft import Nft
from .model import TABLE
from .render.ids import id_from_comment, safe_label
from .render.ipt import chain_name, ipset_name
from .render.nft import FAMILY


def _groups_by_id(plan: Plan) -> dict[str, str]:
    """nft: rule id → group, for every condemning rule of the plan."""
    model_rules = [r for c in plan.ruleset.chains for r in c.rules]
    assert len(model_rules) == len(plan.nft.rules)  # render_nft renders chain.rules one for one
    return {id_from_comment(rendered["comment"]): rule.group
            for rule, rendered in zip(model_rules, plan.nft.rules) if rule.group}


def _groups_by_label(plan: Plan) -> dict[tuple[str, str], str]:
    """iptables: (chain, label) → group. A base chain's rules live in its ``-UPLINK`` chain."""
    out = {}
    for c in plan.ruleset.chains:
        for r in c.rules:
            if r.group:
                label = safe_label(r.label)
                out[(chain_name(c.name), label)] = r.group
                out[(chain_name(c.name) + "-UPLINK", label)] = r.group
    return out


def drops_by_group(plan: Plan, nft: Nft) -> dict[str, dict[str, int]]:
    """group → {"packets", "bytes"} condemned, from the kernel counters of the condemning rules."""
    out = {g: {"packets": 0, "bytes": 0} for g in _all_groups(plan)}
    if plan.nft is not None:
        by_id = _groups_by_id(plan)
        for _chain, comment, packets, nbytes in rule_counters():
            group = by_id.get(id_from_comment(comment))
            if group is not None:
                out[group]["packets"] += packets
                out[group]["bytes"] += nbytes
        return out
    by_label = _groups_by_label(plan)
    ipt = Ipt(plan.flavour)
    for version in plan.ipt:
        for _chains, rules in ipt.tables(version).values():
            for r in rules:
                if not r.rule_id or '--comment "' not in r.line:
                    continue
                text = r.line.split('--comment "', 1)[1].split('"', 1)[0]
                label = text.split(" ", 1)[1] if " " in text else ""
                group = by_label.get((r.chain, label))
                if group is not None:
                    out[group]["packets"] += r.packets
                    out[group]["bytes"] += r.bytes
    return out


def _all_groups(plan: Plan) -> list[str]:
    seen: dict[str, None] = {}
    for c in plan.ruleset.chains:
        for r in c.rules:
            if r.group:
                seen.setdefault(r.group, None)
    return list(seen)


def condemned_by_group(plan: Plan, nft: Nft) -> dict[str, int]:
    """group → packets condemned (the sampler's estimates scale by these)."""
    return {g: c["packets"] for g, c in drops_by_group(plan, nft).items()}


# --- meter fill --------------------------------------------------------------------------
NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_GETRULE, NFT_MSG_GETSETELEM = 7, 13
NFTA_RULE_TABLE, NFTA_RULE_CHAIN, NFTA_RULE_EXPRESSIONS, NFTA_RULE_USERDATA = 1, 2, 4, 7
NFTA_LIST_ELEM, NFTA_EXPR_NAME, NFTA_EXPR_DATA = 1, 1, 2
NFTA_COUNTER_BYTES, NFTA_COUNTER_PACKETS = 1, 2
NFTNL_UDATA_RULE_COMMENT = 0
NFPROTO_INET = 1
NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_ELEMENTS = 1, 2, 3
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
_NLMSG = struct.Struct("=IHHII")
_NLA = struct.Struct("=HH")


def _nla(atype: int, payload: bytes) -> bytes:
    n = _NLA.size + len(payload)
    return _NLA.pack(n, atype) + payload + b"\0" * (-n % 4)


def _attrs(buf: bytes, off: int, end: int) -> dict[int, tuple[int, int]]:
    """type -> (start, end) of each attribute's payload in buf[off:end]."""
    out = {}
    while off + _NLA.size <= end:
        alen, atype = _NLA.unpack_from(buf, off)
        if alen < _NLA.size or off + alen > end:
            break
        out[atype & 0x3FFF] = (off + _NLA.size, off + alen)
        off += (alen + 3) & ~3
    return out


def _list(buf: bytes, off: int, end: int) -> list[tuple[int, int]]:
    out = []
    while off + _NLA.size <= end:
        alen, _atype = _NLA.unpack_from(buf, off)
        if alen < _NLA.size or off + alen > end:
            break
        out.append((off + _NLA.size, off + alen))
        off += (alen + 3) & ~3
    return out


def parse_rules(buf: bytes) -> tuple[list[tuple[str, str | None, int, int]], bool, int]:
    """(chain, comment, packets, bytes) of every rule in one datagram of a GETRULE dump, whether
    the dump is done, and an error code. Malformed parts are skipped, never raised."""
    out, off, done = [], 0, False
    while off + _NLMSG.size <= len(buf):
        length, mtype, _flags, _seq, _pid = _NLMSG.unpack_from(buf, off)
        if length < _NLMSG.size or off + length > len(buf):
            break
        if mtype == NLMSG_DONE:
            done = True
        elif mtype == NLMSG_ERROR:
            code = struct.unpack_from("=i", buf, off + _NLMSG.size)[0] if length >= _NLMSG.size + 4 else 0
            if code:
                return out, True, -code
        elif mtype & 0xFF == NFT_MSG_GETRULE - 1:  # NFT_MSG_NEWRULE
            a = _attrs(buf, off + _NLMSG.size + 4, off + length)
            chain = buf[slice(*a[NFTA_RULE_CHAIN])].split(b"\0", 1)[0].decode("ascii", "replace") \
                if NFTA_RULE_CHAIN in a else ""
            comment = None
            if NFTA_RULE_USERDATA in a:
                u, uend = a[NFTA_RULE_USERDATA]
                while u + 2 <= uend:
                    utype, ulen = buf[u], buf[u + 1]
                    if utype == NFTNL_UDATA_RULE_COMMENT:
                        comment = buf[u + 2:u + 2 + ulen].split(b"\0", 1)[0].decode("ascii", "replace")
                    u += 2 + ulen
            packets = nbytes = 0
            for e, eend in _list(buf, *a.get(NFTA_RULE_EXPRESSIONS, (0, 0))):
                ea = _attrs(buf, e, eend)
                if NFTA_EXPR_NAME in ea and buf[slice(*ea[NFTA_EXPR_NAME])].startswith(b"counter\0") \
                        and NFTA_EXPR_DATA in ea:
                    ca = _attrs(buf, *ea[NFTA_EXPR_DATA])
                    if all(k in ca and ca[k][1] - ca[k][0] >= 8 for k in (NFTA_COUNTER_PACKETS, NFTA_COUNTER_BYTES)):
                        packets = struct.unpack_from(">Q", buf, ca[NFTA_COUNTER_PACKETS][0])[0]
                        nbytes = struct.unpack_from(">Q", buf, ca[NFTA_COUNTER_BYTES][0])[0]
            out.append((chain, comment, packets, nbytes))
        off += (length + 3) & ~3
    return out, done, 0


def _dump(msg_type: int, attrs: bytes, parse) -> list:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind((0, 0))
        sock.settimeout(5)
        body = struct.pack("=BBH", NFPROTO_INET, 0, 0) + attrs
        sock.send(_NLMSG.pack(_NLMSG.size + len(body), (NFNL_SUBSYS_NFTABLES << 8) | msg_type,
                              NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + body)
        out, done = [], False
        while not done:
            items, done, err = parse(sock.recv(1 << 17))
            if err:
                if err == 2:  # ENOENT: no such table
                    return []
                raise OSError(err, os.strerror(err))
            out += items if isinstance(items, list) else [items]
        return out
    finally:
        sock.close()


def rule_counters(table: str = TABLE) -> list[tuple[str, str | None, int, int]]:
    """(chain, comment, packets, bytes) of every rule of ``inet <table>``: one netlink dump of the
    rules only (no sets, no elements)."""
    return _dump(NFT_MSG_GETRULE, _nla(NFTA_RULE_TABLE, table.encode() + b"\0"), parse_rules)


def count_elements(buf: bytes) -> tuple[int, bool, int]:
    """(elements counted, dump done, error code) in one datagram of a GETSETELEM dump."""
    off, count, done = 0, 0, False
    while off + _NLMSG.size <= len(buf):
        length, mtype, _flags, _seq, _pid = _NLMSG.unpack_from(buf, off)
        if length < _NLMSG.size or off + length > len(buf):
            break
        if mtype == NLMSG_DONE:
            done = True
        elif mtype == NLMSG_ERROR:
            code = struct.unpack_from("=i", buf, off + _NLMSG.size)[0] if length >= _NLMSG.size + 4 else 0
            if code:
                return count, True, -code
        else:
            a, end = off + _NLMSG.size + 4, off + length  # after the nfgenmsg
            while a + _NLA.size <= end:
                alen, atype = _NLA.unpack_from(buf, a)
                if alen < _NLA.size:
                    break
                if atype & 0x3FFF == NFTA_SET_ELEM_LIST_ELEMENTS:
                    e, eend = a + _NLA.size, min(a + alen, end)
                    while e + _NLA.size <= eend:
                        elen = _NLA.unpack_from(buf, e)[0]
                        if elen < _NLA.size:
                            break
                        count += 1
                        e += (elen + 3) & ~3
                a += (alen + 3) & ~3
        off += (length + 3) & ~3
    return count, done, 0


def nft_set_sizes(names: list[str], table: str = TABLE) -> dict[str, int | None]:
    """Elements in each named set of ``inet <table>`` (None: no such set), one dump per set."""
    out: dict[str, int | None] = {}
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind((0, 0))
        sock.settimeout(5)
        for seq, name in enumerate(names, 1):
            body = struct.pack("=BBH", NFPROTO_INET, 0, 0) + _nla(NFTA_SET_ELEM_LIST_TABLE, table.encode() + b"\0") \
                + _nla(NFTA_SET_ELEM_LIST_SET, name.encode() + b"\0")
            sock.send(_NLMSG.pack(_NLMSG.size + len(body), (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETSETELEM,
                                  NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body)
            total, done, err = 0, False, 0
            while not done:
                n, done, err = count_elements(sock.recv(1 << 17))
                total += n
            out[name] = None if err else total
    finally:
        sock.close()
    return out


def meter_fill(plan: Plan) -> list[dict]:
    """Every per-source set: [{"set", "kind", "kernel_name", "elements", "size"}], as status shows it."""
    sets = [s for s in plan.ruleset.sets if s.kind != "allow"]
    if plan.nft is not None:
        sizes = nft_set_sizes([s.name for s in sets])
        return [{"set": s.base, "kind": s.kind, "kernel_name": s.name, "elements": sizes.get(s.name) or 0,
                 "size": s.size} for s in sets]
    live = Ipset.live()
    return [{"set": s.base, "kind": s.kind, "kernel_name": ipset_name(s),
             "elements": live[ipset_name(s)].entries if ipset_name(s) in live else 0, "size": s.size}
            for s in sets if s.kind != "conns"]
