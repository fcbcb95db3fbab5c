"""The render, pinned and checked without root: what every kernel and every backend would be sent.

The test machine's kernel lacks nft ``queue``, so no kernel test here takes the path stock kernels
take (nfqueue sampling). These tests do: whole transactions pinned for both transports and both
backends, invariants over many generated policies, and nft's own evaluation of the nfqueue render.
After an intended change, rewrite the goldens with ``pytest --update-goldens`` (that run fails: review
``git diff tests/golden``, then run again without it).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guard.apply import sampling_settings
from guard.backend.nft import NftLive
from guard.model.banning import BANNED, DENIED
from guard.model.build import build_ruleset
from guard.model.matches import SourceRateOver
from guard.model.plans import Priorities, SynproxyPlan
from guard.model.ruleset import RuleSet
from guard.model.verdicts import Continue, Drop, Goto
from guard.policy.fields import MAX_SET_SIZE
from guard.policy.load import parse_policy
from guard.policy.schema import Policy
from guard.policy.threats import Synproxy
from guard.render import ipt as render_ipt
from guard.render import ipt_names
from guard.render import nft as render_nft
from guard.render.ids import PREFIX
from guard.sync import ipt as sync_ipt
from guard.sync import nft as sync_nft

GOLDEN = Path(__file__).resolve().parent / "golden"
TERMINAL = {"queue", "drop", "accept", "reject", "goto", "jump", "return"}


_ENGAGE = (Synproxy().engage_over, Synproxy().hold_s)  # the policy's defaults
SYNPROXY = SynproxyPlan((22, 6443, 10250), (22, 10250), 1460, 1440, 7, False, *_ENGAGE)  # a node's listeners
# with NodePorts too, SYNPROXY itself answers (the host-ports-only plan leaves that to the kernel's syncookies)
FORWARDED = SynproxyPlan((22, 6443, 10250, 30080), (22, 10250, 30080), 1460, 1440, 7, True, *_ENGAGE)


_BY_TRANSPORT = object()


def _ruleset(policy: Policy, transport: str, synproxy: SynproxyPlan | None | object = _BY_TRANSPORT
             ) -> RuleSet:
    """By default the nflog goldens pin the host-ports plan, the nfqueue ones the forwarded (SYNPROXY) plan."""
    if synproxy is _BY_TRANSPORT:
        synproxy = SYNPROXY if transport == "nflog" else FORWARDED
    sampling = sampling_settings(policy, transport)
    return build_ruleset(policy, tuple(policy.interfaces), Priorities(), sampling, synproxy)


def _nft_fresh(rs: RuleSet) -> dict:
    return sync_nft.build(render_nft.render_nft(rs), NftLive()).json()


def _ipt_fresh(rs: RuleSet) -> str:
    renders = {v: render_ipt.render_ipt(rs, v) for v in (4, 6)}
    return sync_ipt.build("nft", renders, render_ipt.ipsets(rs), {}, {}, {}).text()


def _small() -> Policy:
    return parse_policy((GOLDEN / "small.yaml").read_text(), "small.yaml")


@pytest.mark.parametrize("transport", ["nflog", "nfqueue"])
def test_nft_transaction_for_the_small_policy_is_pinned(transport, golden):
    golden(f"small.{transport}.nft.json", json.dumps(_nft_fresh(_ruleset(_small(), transport)), indent=1) + "\n")


@pytest.mark.parametrize("transport", ["nflog", "nfqueue"])
def test_iptables_transaction_for_the_small_policy_is_pinned(transport, golden):
    iptables = _small().model_copy(update={"backend": "iptables"})  # its layout: invalid-rst is not counted
    golden(f"small.{transport}.iptables.txt", _ipt_fresh(_ruleset(iptables, transport)))


# --- invariants over generated policies ----------------------------------------------------
names = st.from_regex(r"[a-z][a-z0-9-]{0,19}", fullmatch=True)
rates = st.builds(lambda n, u, b: f"{n}/{u}" + (f" burst {b}" if b else ""),
                  st.integers(1, 10**6), st.sampled_from(["second", "minute", "hour"]),
                  st.one_of(st.none(), st.integers(1, 10**6)))
ports = st.lists(st.integers(1, 65535), max_size=15, unique=True)


@st.composite
def policies(draw) -> Policy:
    limit_names = draw(st.lists(names, max_size=4, unique=True))
    conn_names = draw(st.lists(names.filter(lambda n: n not in limit_names and not n.startswith("conn-")),
                               max_size=3, unique=True))
    limits = []
    for n in limit_names:
        proto = draw(st.sampled_from(["tcp", "udp", "icmp", "all"]))
        lim = {"name": n, "protocol": proto, "per_source": draw(rates)}
        if proto in ("tcp", "udp") and draw(st.booleans()):
            lim["ports" if draw(st.booleans()) else "except_ports"] = draw(ports.filter(bool))
        limits.append(lim)
    doc = {
        "interfaces": draw(st.lists(st.from_regex(r"[a-z][a-z0-9]{0,7}", fullmatch=True).filter(lambda x: x != "lo"),
                                    min_size=1, max_size=3, unique=True)),
        "icmp": {"rate": draw(rates), "per_source": draw(rates), "mode": draw(st.sampled_from([None, "monitor"]))},
        "syn": {"rate": draw(rates), "per_source": draw(rates),
                "trusted_after_handshake_s": draw(st.integers(0, 86400))},
        "limits": limits,
        "connlimit": [{"name": n, "ports": draw(ports), "per_source": draw(st.integers(1, 10**5))} for n in conn_names],
        "meter": {"size": draw(st.integers(16, MAX_SET_SIZE)), "timeout_s": draw(st.integers(1, 86400))},
        "mode": draw(st.sampled_from(["enforce", "enforce", "monitor"])),
    }
    gap = draw(st.integers(1, 3599))
    doc["escalate"] = {"enabled": draw(st.booleans()), "gap_s": gap, "after_s": draw(st.integers(gap + 1, 3600)),
                       "ban_s": draw(st.integers(1, 604800)), "size": draw(st.integers(16, MAX_SET_SIZE))}
    return Policy.model_validate(doc)


def _nft_invariants(tx: dict) -> None:
    seen: dict[str, set] = {}
    for cmd in tx["nftables"]:
        (verb, obj), = cmd.items()
        (kind, body), = obj.items()
        if verb == "add" and kind in ("set", "limit", "chain"):
            assert body["name"] not in seen.setdefault(kind, set()), f"{kind} {body['name']} added twice"
            seen[kind].add(body["name"])
        if kind != "rule":
            continue
        keys = [next(iter(e)) for e in body["expr"]]
        for i, key in enumerate(keys):
            if key in TERMINAL:
                assert i == len(keys) - 1, f"{keys[i + 1:]} after terminal {key} in {body['chain']}"
        assert re.fullmatch(rf"{PREFIX}[0-9a-f]{{16}} [A-Za-z0-9 _.,:/+=()<>?-]*", body["comment"]), body["comment"]


def _ipt_invariants(rs: RuleSet, text: str) -> None:
    chains = re.findall(r"^:(\S+) ", text, re.M)
    assert all(len(c) <= ipt_names.MAX_CHAIN for c in chains), chains
    for version in (4, 6):
        r = render_ipt.render_ipt(rs, version)
        declared = [c for t in r.tables.values() for c in t.chains]
        assert len(declared) == len(set(declared)), "a chain name used twice"
        for t in r.tables.values():  # a Line's fields say what its text says
            assert all(f'--comment "{PREFIX}{x.id} ' in x.spec and x.target is None for x in t.rules), t.rules
            assert all(x.spec.startswith(f'-m comment --comment "{PREFIX}{x.id} ')
                       and x.spec.endswith(f" -j {x.target}") and x.target in t.chains for x in t.jumps), t.jumps
    sets = render_ipt.ipsets(rs)
    assert len({s.name for s in sets}) == len(sets) and all(len(s.name) <= ipt_names.MAX_IPSET for s in sets)
    hashlimits = re.findall(r"--hashlimit-name (\S+)", text)
    assert all(len(n) <= 15 for n in hashlimits)
    for line in text.splitlines():
        if line.startswith(("-A ", "-I ")):
            assert "--comment \"nodeguard:" in line and line.count('"') % 2 == 0, line
            assert all(re.fullmatch(r"[A-Za-z0-9 _.,:/+=()<>?-]*", q) for q in line.split('"')[1::2]), line


synproxies = st.one_of(st.none(), st.builds(
    SynproxyPlan, st.lists(st.integers(1, 65535), max_size=20, unique=True).map(tuple),
    st.lists(st.integers(1, 65535), max_size=20, unique=True).map(tuple), st.integers(536, 9000),
    st.integers(1220, 9000), st.integers(0, 14), st.booleans(), st.just(Synproxy().engage_over),
    st.integers(1, 86400)))


def _escalation_invariants(policy: Policy, rs: RuleSet) -> None:
    """Only enforce-mode per-source rules escalate (never a backstop, monitor mode, bogus flags or
    connlimit); an escalation chain's last rule is its group's condemned path and carries no group;
    the ban check at the head of filter-prerouting, always (manual bans); its escalation ban rules only when
    something escalates."""
    escalating = []
    for c in rs.chains:
        for r in c.rules:
            if isinstance(r.verdict, Goto) and r.verdict.chain.startswith("escalate-"):
                assert r.mode == "enforce" and any(isinstance(x, SourceRateOver) for x in r.matches), r
                assert r.group and r.verdict.chain.startswith(f"escalate-{r.group}-v"), r
                escalating.append(r)
    esc_chains = [c for c in rs.chains if c.name.startswith("escalate-")]
    pre = next(c for c in rs.chains if c.stage == "stateless")
    bans = [r for r in pre.rules if r.group in (BANNED, DENIED)]
    first = pre.rules.index(bans[0])  # after the interface check, the failsafe pairs and a bare RST's return
    assert pre.rules[0].label == "not a protected interface"
    ahead = [r.label for r in pre.rules[1:first]]  # the failsafe pairs, then the bare RST's return if any
    rst = ["tcp bare rst"] if any(r.label == "tcp bare rst" for r in pre.rules) else []
    assert ahead == [lbl for lbl in ahead if lbl.startswith("failsafe ")] + rst, ahead
    assert pre.rules[first:first + len(bans)] == tuple(bans)
    kinds = {s.name: s.kind for s in rs.sets}
    dropped_from = [kinds[r.matches[0].set] for r in bans]
    manual_drop = Drop if policy.mode == "enforce" else Continue
    assert [(r.group, type(r.verdict)) for r in bans if kinds[r.matches[0].set] == "manual"] == \
        [("banned", manual_drop)] * 2
    if not policy.escalate.enabled or not escalating:
        assert not esc_chains and "escalation" not in dropped_from and "escalation" not in kinds.values()
        return
    assert len(esc_chains) == len(escalating)
    for c in esc_chains:
        *acts, last = c.rules
        assert all(isinstance(r.verdict, Continue) and r.group is None for r in acts)
        assert last.group is None and not last.matches and isinstance(last.verdict, (Goto, Drop))
    assert [(r.group, type(r.verdict)) for r in bans if kinds[r.matches[0].set] == "escalation"] == \
        [("banned", Drop)] * 2
    banned = [s for s in rs.sets if s.base.startswith("banned-")]
    assert {(s.size, s.timeout_s) for s in banned} == {(policy.escalate.size, policy.escalate.ban_s)}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy=policies(), transport=st.sampled_from(["nflog", "nfqueue"]), synproxy=synproxies)
def test_every_generated_policy_renders_to_valid_unique_escaped_objects(policy, transport, synproxy):
    rs = _ruleset(policy, transport, synproxy)  # RuleSet itself refuses duplicate names and dangling references
    _nft_invariants(_nft_fresh(rs))
    _ipt_invariants(rs, _ipt_fresh(rs))
    _escalation_invariants(policy, rs)


def test_every_parameter_of_a_stateful_object_is_in_its_name():
    """The kernel keeps a set's or a hashlimit table's parameters for as long as its name lives,
    so a changed rate, burst, size or timeout must give a new name, and nothing else may."""
    base = _small()
    variants = {
        "per-source rate": "syn:\n  per_source: 300/second\n",
        "per-source burst": "syn:\n  per_source_burst: 999\n",
        "meter size": "meter:\n  size: 8192\n",
        "meter timeout": "meter:\n  timeout_s: 31\n",
        "trusted timeout": "syn:\n  trusted_after_handshake_s: 60\n",
        "backstop rate": "syn:\n  rate: 6000/second\n",
        "connection limit": "connlimit:\n  - name: web\n    ports: [80, 443]\n    per_source: 100\n",
        "sample cap": "sampler:\n  global_rate: 10/second\n",
        "escalation episode": "escalate:\n  after_s: 5\n",
        "escalation gap": "escalate:\n  gap_s: 2\n",
        "ban time": "escalate:\n  ban_s: 60\n",
        "ban set size": "escalate:\n  size: 1024\n",
    }

    def stateful(p: Policy) -> set[str]:
        rs = _ruleset(p, "nflog")
        return ({s.name for s in rs.sets if s.kind != "allow"} | {x.name for x in rs.limits}
                | set(re.findall(r"--hashlimit-name (\S+)", _ipt_fresh(rs))))

    same = stateful(base)
    assert stateful(_small()) == same, "a re-render keeps every name"
    text = (GOLDEN / "small.yaml").read_text()
    for what, patch in variants.items():
        changed = parse_policy(_merge(text, patch), "v.yaml")
        assert stateful(changed) != same, f"{what} changed but no stateful name did"


def _merge(text: str, patch: str) -> str:
    """The YAML ``text`` with the top-level sections in ``patch`` merged in (one level deep)."""
    import yaml
    doc, add = yaml.safe_load(text), yaml.safe_load(patch)
    for k, v in add.items():
        doc[k] = {**doc[k], **v} if isinstance(v, dict) and isinstance(doc.get(k), dict) else v
    return yaml.safe_dump(doc)


def test_injected_text_in_a_name_is_refused_before_any_render():
    from guard.errors import PolicyError
    evil = 'connlimit:\n  - name: "x\\"\\nCOMMIT\\n*nat\\n-F\\nCOMMIT\\n*filter\\n#"\n    per_source: 5\n'
    with pytest.raises(PolicyError) as exc:
        parse_policy(evil, "evil.yaml")
    assert str(exc.value).startswith("evil.yaml:2: connlimit[0].name: must be 1-20 characters")
    with pytest.raises(ValueError, match="unsafe line"):
        sync_ipt.restore_text(None, {"raw": __import__("guard.backend.ipt", fromlist=["x"]).LiveTable(
            [], ['-A PREROUTING -m comment --comment "nodeguard:1 x" -j NODEGUARD-PRE\n*nat\n-F'])})


@pytest.mark.parametrize("text", [
    "limits:\n  - name: trusted\n    protocol: udp\n    per_source: 1/second\nconnlimit:\n  - name: trusted\n    per_source: 1\n",
    "limits:\n  - name: a\n    protocol: udp\n    per_source: 1/second\n  - name: a\n    protocol: tcp\n    per_source: 1/second\n",
    "connlimit:\n  - per_source: 1\n  - name: conn-0\n    per_source: 2\n",
])
def test_a_name_used_twice_is_one_line_naming_the_field(text):
    from guard.errors import PolicyError
    with pytest.raises(PolicyError) as exc:
        parse_policy(text, "f.yaml")
    assert "is used twice" in str(exc.value) and "\n" not in str(exc.value)


def test_reserved_looking_names_cannot_collide_with_built_in_objects():
    """User names live under their own prefixes (limit-<name>, conn-<name>)."""
    doc = ("limits:\n" + "".join(f"  - name: {n}\n    protocol: udp\n    per_source: 1/second\n"
                                 for n in ("allow", "trusted", "syn-src", "icmp-src", "syn-flood", "sample-all"))
           + "connlimit:\n  - name: icmp-flood\n    per_source: 3\n")
    rs = _ruleset(parse_policy(doc, "f.yaml"), "nfqueue")  # RuleSet.__post_init__ would raise on a clash
    _nft_invariants(_nft_fresh(rs))
    _ipt_invariants(rs, _ipt_fresh(rs))


@pytest.mark.calm
# --- nft's own evaluation of what stock kernels get --------------------------------------
def test_nft_itself_accepts_the_nfqueue_render(ns):
    """``nft -c`` runs nft's full evaluation and asks the kernel. The only error allowed is this
    kernel lacking the queue expression; the same render with queue swapped for drop must pass."""
    tx = _nft_fresh(_ruleset(Policy.model_validate({"interfaces": ["eth0"]}), "nfqueue"))
    res = ns.run(["nft", "-c", "-j", "-f", "-"], check=False, input=json.dumps(tx))
    if res.returncode == 0:
        return  # a kernel with nft queue: accepted as it is
    assert "Statement after terminal" not in res.stderr, res.stderr
    errors = [ln for ln in res.stderr.splitlines() if "Error" in ln]
    assert errors and all("Could not process rule: No such file or directory" in ln for ln in errors), res.stderr
    for cmd in tx["nftables"]:
        rule = cmd.get("add", {}).get("rule")
        if rule:
            rule["expr"] = [{"drop": None} if "queue" in e else e for e in rule["expr"]]
    assert '"queue"' not in json.dumps(tx)
    ns.run(["nft", "-c", "-j", "-f", "-"], input=json.dumps(tx))
