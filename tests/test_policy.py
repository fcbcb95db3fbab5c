"""Policy parsing: defaults, and one precise line for every kind of bad input (no kernel needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

import guard.policy.load
from guard.errors import PolicyError
from guard.policy.load import load_policy, parse_policy
from guard.policy.schema import Policy

ROOT = Path(__file__).resolve().parent.parent


def test_built_in_default_is_rules_default_yaml_and_equals_the_code_defaults(tmp_path, monkeypatch):
    # the default location is this test's, not the host's /etc/nodeguard/config.yaml (which a node may have)
    monkeypatch.setattr(guard.policy.load, "DEFAULT_CONFIG", tmp_path / "config.yaml")
    policy, source = load_policy(None)
    shipped = parse_policy((ROOT / "rules" / "default.yaml").read_text(), "rules/default.yaml")
    assert shipped == Policy() == parse_policy("{}", "empty.yaml")
    assert policy == shipped and source == "<built-in rules/default.yaml>"


def test_without_a_path_the_file_at_the_default_location_is_read_when_it_exists(tmp_path, monkeypatch):
    monkeypatch.setattr(guard.policy.load, "DEFAULT_CONFIG", tmp_path / "config.yaml")
    (tmp_path / "config.yaml").write_text("icmp:\n  per_source: 7/second\n")
    policy, source = load_policy(None)
    assert (policy.icmp.per_source.count, source) == (7, str(tmp_path / "config.yaml"))
    (tmp_path / "config.yaml").write_text("icmp:\n  per_source: lots\n")
    with pytest.raises(PolicyError, match=r"config.yaml:2: icmp.per_source: rate must look like"):
        load_policy(None)  # a broken file there is an error, never a silent fall back to the built-in


def test_every_shipped_policy_is_valid():
    files = sorted((ROOT / "rules").glob("*.yaml"))
    assert files
    for f in files:
        parse_policy(f.read_text(), str(f))


def test_rates_bursts_and_ipv6_cidrs_parse():
    p = parse_policy("""
icmp:
  rate: 3/minute burst 7
syn:
  per_source: 10/hour
allow:
  cidrs: [10.0.0.0/8, "2001:db8::/32", 10.1.0.0/16]
""", "f.yaml")
    assert (p.icmp.rate.count, p.icmp.rate.unit, p.icmp.rate.burst) == (3, "minute", 7)
    assert p.syn.per_source.per_s == pytest.approx(10 / 3600)
    assert [str(n) for n in p.allow.networks(4)] == ["10.0.0.0/8"]  # overlaps merged
    assert [str(n) for n in p.allow.networks(6)] == ["2001:db8::/32"]


@pytest.mark.parametrize("text,expected", [
    ("icmp:\n  rate: 10/sec\n", "f.yaml:2: icmp.rate: rate must look like"),
    ("icmp:\n  rate: 0/second\n", "f.yaml:2: icmp.rate: rate must be greater than zero"),
    ("icmp:\n  burst: -5\n", "f.yaml:2: icmp.burst: Input should be greater than 0"),
    ("colour: blue\n", "f.yaml:1: colour: unknown key"),
    ("syn:\n  per_source: 1/second\n  typo: 1\n", "f.yaml:3: syn.typo: unknown key"),
    ("allow:\n  cidrs:\n    - 10.0.0.0/8\n    - 10.0.0.1/8\n", "f.yaml:4: allow.cidrs[1]: '10.0.0.1/8' is not a CIDR"),
    ("allow:\n  cidrs: [fd00::zz/64]\n", "f.yaml:2: allow.cidrs[0]: 'fd00::zz/64' is not a CIDR"),
    ("interfaces: [eth0, lo]\n", "f.yaml:1: interfaces[1]: loopback is never limited"),
    ("interfaces: eth0\n", "f.yaml:1: interfaces: must be 'auto' or a list of interface names"),
    ("meter:\n  size: 0\n", "f.yaml:2: meter.size: Input should be greater than or equal to 16"),
    ("limits:\n  - name: a\n    protocol: udp\n", "f.yaml:2: limits[0].per_source: required key is missing"),
    ("limits:\n  - name: a\n    protocol: sctp\n    per_source: 1/second\n", "f.yaml:3: limits[0].protocol:"),
    ("connlimit:\n  - ports: [70000]\n    per_source: 1\n", "f.yaml:2: connlimit[0].ports[0]:"),
    ("connlimit:\n  - per_source: '5'\n", "f.yaml:2: connlimit[0].per_source: Input should be a valid integer"),
    ("icmp:\n  burst: 1\n  burst: 2\n", "f.yaml:3: icmp.burst: duplicate key"),
    ("icmp: [\n", "f.yaml:2: invalid YAML"),
    ("- just a list\n", "f.yaml:1: the policy must be a mapping"),
    ("backend: pf\n", "f.yaml:1: backend: Input should be 'nft' or 'iptables'"),
    # found by the adversarial review of the real-node fixes:
    ("icmp:\n  rate: \"\u0661\u0660/second\"\n", "f.yaml:2: icmp.rate: rate must look like"),
    ("icmp:\n  rate: \"10/second\\n\"\n", "f.yaml:2: icmp.rate: rate must look like"),
    ("interfaces: [\"eth0\\n\"]\n", "f.yaml:1: interfaces[0]: 'eth0\\n' is not an interface name"),
    ("allow:\n  cidrs: [\"fe80::%eth0/64\"]\n", "f.yaml:2: allow.cidrs[0]: 'fe80::%eth0/64' is not a CIDR"),
    ("allow:\n  cidrs: [0.0.0.0/0]\n", "f.yaml:2: allow.cidrs[0]: '0.0.0.0/0' would allow every source"),
    ("allow:\n  cidrs: ['8000::/1']\n", "f.yaml:2: allow.cidrs[0]: '8000::/1' is broader than /32"),
    ("allow:\n  cidrs: [" + ", ".join(f"{i}.0.0.0/8" for i in range(128, 256)) + "]\n",
     "f.yaml:2: allow.cidrs: these prefixes together cover half of IPv4 or more: nodeguard would protect nothing"),
    ("a: &a {rate: 1/second}\nicmp:\n  <<: *a\n", "f.yaml:3: icmp: merge keys (<<) are not supported"),
    ("icmp: !!python/object:os.system {}\n", "f.yaml:1: icmp: the tag"),
    ("icmp:\n  rate: !!binary aGVsbG8=\n", "f.yaml:2: icmp.rate: rate must look like"),
    # names the kernel refuses (dev_valid_name) or a backend cannot write without quoting
    ("interfaces: [\"eth0:1\"]\n", "f.yaml:1: interfaces[0]: 'eth0:1' is not an interface name"),
    ("interfaces: [\"..\"]\n", "f.yaml:1: interfaces[0]: '..' is not an interface name"),
    ("interfaces: ['a\"b']\n", "f.yaml:1: interfaces[0]: 'a\"b' is not an interface name"),
    ("interfaces: [abcdefghijklmnop]\n", "f.yaml:1: interfaces[0]: 'abcdefghijklmnop' is not an interface name"),
    ("sampler:\n  max_flows: 1000000\n", "f.yaml:2: sampler.max_flows: Input should be less than or equal to 30000"),
])
def test_bad_input_names_file_line_and_field(text, expected):
    with pytest.raises(PolicyError) as exc:
        parse_policy(text, "f.yaml")
    line = str(exc.value)
    assert line.startswith(expected), line
    assert "\n" not in line


def test_a_missing_libnftables_is_one_clear_line_with_exit_2(monkeypatch):
    from guard.backend import nft
    from guard.errors import EnvironmentProblem

    monkeypatch.setattr(nft, "_LIB", "libnftables-that-is-not-installed.so.9")
    with pytest.raises(EnvironmentProblem) as exc:
        nft.Nft()
    assert exc.value.exit_code == 2
    assert "install Debian's libnftables1" in str(exc.value) and "\n" not in str(exc.value)


def test_a_nested_alias_bomb_is_refused_at_once_not_built():
    import time
    levels = ["a: &a [" + ",".join(['"x"'] * 9) + "]"]
    for prev, name in zip("abcdefgh", "bcdefghi"):
        levels.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    started = time.monotonic()
    with pytest.raises(PolicyError) as exc:
        parse_policy("\n".join(levels) + "\n", "bomb.yaml")
    assert str(exc.value) == "bomb.yaml:1: aliases would add more than 10000 values to the document"
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("depth, error", [(32, None), (33, "f.yaml:2: nested more than 32 levels deep")])
def test_a_scalar_deeper_than_the_limit_is_refused_at_its_own_line(depth, error):
    """A scalar is measured and read without a call of its own (yamlsource.py): it still counts as
    one level, and the error names its line, not its list's."""
    from guard.yamlsource import load_document

    text = "a: " + "[" * (depth - 1) + "\n  x" + "]" * (depth - 1) + "\n"
    if error is None:
        doc = load_document(text, "f.yaml")
        assert doc.line_of(("a",) + (0,) * (depth - 1)) == 2 and doc.line_of(("a",) + (0,) * (depth - 2)) == 1
    else:
        with pytest.raises(PolicyError) as exc:
            load_document(text, "f.yaml")
        assert str(exc.value) == error


def test_list_items_keep_their_lines_an_alias_its_anchors():
    from guard.yamlsource import load_document

    doc = load_document("a:\n  - &x one\n  - 2\n  - *x\n  - [three]\n", "f.yaml")
    assert doc.data == {"a": ["one", 2, "one", ["three"]]}
    assert [doc.lines[("a", i)] for i in range(4)] == [2, 3, 2, 5] and doc.lines[("a", 3, 0)] == 5


def test_allow_prefixes_that_overlap_count_once_toward_half_a_family():
    """Listed twice over, 10.0.0.0/8 adds up to half of IPv4 (128 copies), but covers a 256th."""
    policy = parse_policy("allow:\n  cidrs: [" + ", ".join(["10.0.0.0/8"] * 128) + "]\n", "f.yaml")
    assert [str(n) for n in policy.allow.networks(4)] == ["10.0.0.0/8"]


# Policies that once raised past the loader (RecursionError, ValueError): each is one line, exit 2 at
# `check`, and the daemon's loader falls back to the last good policy on them.
CRASHERS = {
    "deep": ("syn:\n  x: " + "[" * 500 + "]" * 500 + "\n", "deep.yaml:2: nested more than 32 levels deep"),
    "digits": ("sampler:\n  max_flows: " + "9" * 4301 + "\n", "digits.yaml:2: sampler.max_flows: not a valid int: "),
    "timestamp": ("syn:\n  per_source: 2024-13-45\n",
                  "timestamp.yaml:2: syn.per_source: not a valid timestamp: month must be in 1..12"),
    "laughs": ('a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
               + "".join(f"{n}: &{n} [" + ",".join([f"*{p}"] * 9) + "]\n" for p, n in zip("abcdef", "bcdefg")),
               "laughs.yaml:1: aliases would add more than 10000 values to the document"),
}


@pytest.mark.parametrize("name", CRASHERS)
def test_a_policy_that_crashed_the_loader_is_one_line_and_exit_2_at_check(tmp_path, name):
    import subprocess
    import sys

    text, expected = CRASHERS[name]
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    res = subprocess.run([sys.executable, "-m", "guard", "check", "-c", str(path)], capture_output=True, text=True,
                         cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=60)
    assert res.returncode == 2 and res.stdout == "", res.stderr
    assert len(res.stderr.splitlines()) == 1 and res.stderr.startswith(f"{path.parent}/{expected}"), res.stderr


@pytest.mark.parametrize("name", CRASHERS)
def test_the_daemon_falls_back_to_the_last_good_policy_on_a_policy_that_crashed_the_loader(tmp_path, name):
    """lastgood.startup_policy is what `nodeguard run` and `watch` start with; a reload reads the same
    way (read_policy): the bad file is refused as PolicyError, and the last good policy runs."""
    import logging

    from guard import lastgood

    good = tmp_path / "last-good.yaml"
    good.write_text("icmp:\n  per_source: 7/second\n")
    bad = tmp_path / f"{name}.yaml"
    bad.write_text(CRASHERS[name][0])
    policy, source, text, why = lastgood.startup_policy(str(bad), None, logging.getLogger("test"), good)
    assert (policy.icmp.per_source.count, source, text) == (7, str(good), good.read_text())
    assert why.startswith(f"{tmp_path}/{CRASHERS[name][1]}")
