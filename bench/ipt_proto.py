"""Prototype: the iptables backend's rendering of the default policy (guard/render/ipt.py, as
committed), plus escalation: bans dropped by the first rule of raw PREROUTING (ipset), and the
per-source excess of icmp-flood, syn-flood and limit-udp-per-source going through an
escalation chain before its sample chain.

Escalation (same semantics as bench/lean_table.py): ipsets with timeouts
  NODEGUARD-OVER-V<n>     timeout gap_s    refreshed (--exist) by every per-source drop
  NODEGUARD-EPISODE-V<n>  timeout after_s  (re)started when a source is over without an episode
  NODEGUARD-BANNED-V<n>   timeout ban_s    hash:ip (IPv6: netmask 64 = the /64)
A source in OVER whose EPISODE has expired has been over without a pause of gap_s for
after_s: it is banned (unless it is in TRUSTED: spoofers cannot get handshake-proven clients
banned). A full BANNED set refuses the add: no ban, nothing else dropped (fails open).

Research prototype (branch hotpath-research); guard/ is imported read-only, never changed.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from guard import model  # noqa: E402
from guard.policy import parse_policy  # noqa: E402
from guard.render import ipt as r  # noqa: E402
from guard.render.ids import chained_ids, comment  # noqa: E402

GROUPS = {"icmp-flood": "ICMP-FLOOD", "syn-flood": "SYN-FLOOD", "limit-udp-per-source": "LIMIT-UDP"}
_SPEC = re.compile(r'^-m comment --comment "nodeguard:[0-9a-f]+ (?P<label>[^"]*)" (?P<body>.*)$')


@dataclass
class Params:
    interfaces: tuple[str, ...]
    allow4: tuple[str, ...] = ()
    allow6: tuple[str, ...] = ()
    after_s: int = 3
    gap_s: int = 1
    ban_s: int = 600
    ban_size: int = 65536
    meter_size: int = 65536


def _sets(version: int) -> dict[str, str]:
    return {k: f"NODEGUARD-{k}-V{version}" for k in ("BANNED", "OVER", "EPISODE", "TRUSTED")}


def ruleset(p: Params) -> model.RuleSet:
    cidrs = ", ".join(f'"{c}"' for c in (*p.allow4, *p.allow6))
    policy = parse_policy(f"backend: iptables\ninterfaces: [{', '.join(p.interfaces)}]\nallow:\n  cidrs: [{cidrs}]\n", "proto")
    s = policy.sampler
    sampling = model.Sampling("nflog", s.rate, s.global_rate, s.nflog_group, s.queue_base, s.snaplen)
    return model.build_ruleset(policy, p.interfaces, model.Priorities(), sampling)


def render(p: Params, version: int) -> r.Render:
    rs = ruleset(p)
    out = r.render_ipt(rs, version)
    raw = out.tables["raw"]
    sets = _sets(version)
    by_chain: dict[str, list[tuple[str, str]]] = {c: [] for c in raw.chains}
    for chain, spec in raw.rules:
        m = _SPEC.match(spec)
        body, label = m["body"], m["label"]
        if re.search(r" per-source v[46]$", label):  # per-source excess (not the backstop): escalate first
            for group, short in GROUPS.items():
                sample = r.chain_name(f"sample-{group}")
                if body.endswith(f"-g {sample}"):
                    body = body[: -len(sample)] + f"NODEGUARD-OVER-{short}"
        by_chain[chain].append((body, label))
    esc, going = f"NODEGUARD-ESC-V{version}", f"NODEGUARD-ESC-GOING-V{version}"
    for group, short in GROUPS.items():
        by_chain[f"NODEGUARD-OVER-{short}"] = [(f"-j {esc}", "escalate"), (f"-g {r.chain_name(f'sample-{group}')}", f"sample and drop {group}")]
    by_chain[esc] = [
        (f"-m set --match-set {sets['OVER']} src -m set --match-set {sets['EPISODE']} src -g {going}", "over-limit episode goes on"),
        (f"-m set --match-set {sets['OVER']} src -m set ! --match-set {sets['TRUSTED']} src -j SET --add-set {sets['BANNED']} src",
         f"over for after_s without a pause: ban v{version}"),
        (f"-j SET --add-set {sets['EPISODE']} src --exist", "new over-limit episode (or one after a pause)"),
        (f"-j SET --add-set {sets['OVER']} src --exist", "source is over now"),
    ]
    by_chain[going] = [(f"-j SET --add-set {sets['OVER']} src --exist", "source is still over")]
    raw.chains = list(by_chain)
    raw.rules = []
    for chain, rules in by_chain.items():
        bodies = [b for b, _ in rules]
        for (body, label), rid in zip(rules, chained_ids(chain, bodies)):
            raw.rules.append((chain, f'-m comment --comment "{comment(rid, label)}" {body}'))
    bans = []
    for ifname in p.interfaces:
        body = f"-i {ifname} -m set --match-set {sets['BANNED']} src -j DROP"
        (bid,) = chained_ids(f"raw/PREROUTING/ban/{ifname}", [body])
        bans.append(("PREROUTING", f'-m comment --comment "{comment(bid, f"banned source on {ifname}")}" {body}'))
    raw.jumps = bans + raw.jumps  # restore_text inserts in reverse at 1: the bans end up first
    return out


def ipset_script(p: Params) -> str:
    lines = [r.ipset_script(ruleset(p), set()).rstrip("\n")]
    for version in (4, 6):
        fam, s = ("inet" if version == 4 else "inet6"), _sets(version)
        mask = " netmask 64" if version == 6 else ""
        lines += [f"create {s['BANNED']} hash:ip family {fam}{mask} timeout {p.ban_s} maxelem {p.ban_size} -exist",
                  f"create {s['OVER']} hash:ip family {fam}{mask} timeout {p.gap_s} maxelem {p.meter_size} -exist",
                  f"create {s['EPISODE']} hash:ip family {fam}{mask} timeout {p.after_s} maxelem {p.meter_size} -exist"]
    return "\n".join(lines) + "\n"


def restore_texts(p: Params) -> dict[int, str]:
    return {v: r.restore_text(render(p, v), {}) for v in (4, 6)}


def _tool(flavour: str, version: int, kind: str) -> str:
    return f"{'ip6' if version == 6 else 'ip'}tables-{flavour}-{kind}"


def install(ns, p: Params, flavour: str = "nft") -> None:
    """Load into namespace ``ns`` (an object with .run(args, input=...)), ipsets first."""
    ns.run(["ipset", "restore"], input=ipset_script(p))
    for v, text in restore_texts(p).items():
        ns.run([_tool(flavour, v, "restore"), "--noflush"], input=text)


def uninstall(ns, flavour: str = "nft") -> None:
    for v in (4, 6):
        saved = ns.run([_tool(flavour, v, "save")]).stdout
        out, table = [], None
        for line in saved.splitlines():
            if line.startswith("*"):
                table, chains, dels = line, [], []
            elif line.startswith(":NODEGUARD"):
                chains.append(line.split()[0][1:])
            elif line.startswith("-A ") and "NODEGUARD" in line and not line.split()[1].startswith("NODEGUARD"):
                dels.append("-D" + line[2:])
            elif line == "COMMIT" and (chains or dels):
                out += [table, *dels, *[f"-F {c}" for c in chains], *[f"-X {c}" for c in chains], "COMMIT"]
        if out:
            ns.run([_tool(flavour, v, "restore"), "--noflush"], input="\n".join(out) + "\n")
    names = ns.run(["ipset", "list", "-n"]).stdout.split()
    for name in names:
        if name.startswith("NODEGUARD-"):
            ns.run(["ipset", "destroy", name], check=False)


if __name__ == "__main__":
    prm = Params(("eth0",), ("10.96.0.0/12", "10.244.0.0/16"), ("fd00:10::/56",))
    print("# ipset restore\n" + ipset_script(prm))
    for v, text in restore_texts(prm).items():
        print(f"# {'ip6' if v == 6 else 'ip'}tables-restore --noflush\n{text}")
