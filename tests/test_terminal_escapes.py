"""Names from the kernel and lines from the attack log reach the terminal escaped: foreign nft table
and chain names (status, apply's notes), iptables comments above our jumps (status), ban reasons
(bans); and an interface the kernel named with a quote is refused with one line, not a traceback."""

from __future__ import annotations

import json
import re

import pytest

from guard.lab.netns import add_uplink

RAW = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")  # control characters other than newline
TABLE, CHAIN, COMMENT, GROUP = "fw\x1b[31m", "in\x1b]0;pwned\x07", "\x1b[2Jevil", "syn\x1b[5mflood"

# calm: no floods, no timing: these run beside the other tests, without the machine lock
pytestmark = [pytest.mark.kernel, pytest.mark.calm]


def _clean(res) -> str:
    assert res.returncode == 0, res.stderr
    assert not RAW.search(res.stdout + res.stderr), repr(res.stdout + res.stderr)
    return res.stdout


def test_foreign_names_comments_and_ban_reasons_are_printed_escaped(ns, write_policy, tmp_path):
    add_uplink(ns)
    chain = {"family": "inet", "table": TABLE, "name": CHAIN, "type": "filter", "hook": "prerouting",
             "prio": -500, "policy": "accept"}  # below nodeguard's default: apply moves and says so
    ns.run(["nft", "-j", "-f", "-"], input=json.dumps({"nftables": [
        {"add": {"table": {"family": "inet", "name": TABLE}}}, {"add": {"chain": chain}}]}))
    policy = write_policy("{}")
    shown = "inet fw\\x1b[31m in\\x1b]0;pwned\\x07 (priority -500)"
    assert f"note: stateless chain moved to -399, below {shown}" in _clean(ns.nodeguard("apply", "-c", policy))
    assert "inet fw\\x1b[31m in\\x1b]0;pwned\\x07" in _clean(ns.nodeguard("status", "-c", policy))

    banned = next(s["set"]["name"] for s in ns.nft_json("sets") if s.get("set", {}).get("name", "").startswith("banned-v4"))
    ns.run(f"nft add element inet nodeguard {banned} {{ 192.0.2.9 }}")
    (tmp_path / "log").mkdir(exist_ok=True)
    (tmp_path / "log" / "attacks.jsonl").write_text(json.dumps(
        {"type": "ban", "ts": 1000.0, "src": "192.0.2.9", "groups": [GROUP], "after_s": 3}) + "\n")
    assert "over the per-source limit of syn\\x1b[5mflood" in _clean(ns.nodeguard("bans", "-c", policy))

    ipt = write_policy("backend: iptables\n", "ipt.yaml")
    _clean(ns.nodeguard("apply", "-c", ipt))
    ns.run(["iptables", "-t", "raw", "-I", "PREROUTING", "1", "-m", "comment", "--comment", COMMENT, "-j", "ACCEPT"])
    out = _clean(ns.nodeguard("status", "-c", ipt))
    assert "above it: " in out and "\\x1b[2Jevil" in out


def test_an_uplink_whose_name_a_backend_cannot_write_is_one_line_not_a_traceback(ns, write_policy):
    add_uplink(ns, 'up"0')
    for backend in ("nft", "iptables"):
        res = ns.nodeguard("apply", "-c", write_policy(f"backend: {backend}\n"), check=False)
        assert res.returncode == 2 and len(res.stderr.splitlines()) == 1, res.stderr
        assert res.stderr.startswith("nodeguard: interfaces: auto found 'up\"0', a name nodeguard cannot write"), \
            res.stderr
    assert ns.run("nft list tables").stdout == "" and "NODEGUARD" not in ns.run("iptables-save").stdout
