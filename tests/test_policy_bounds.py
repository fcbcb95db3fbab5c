"""Crafted policies that cost a verb time or memory, or slipped past validation (issue 19): each is
refused through the real CLI (`check`) with one line, exit 2, and nothing written; the bound itself
is accepted. No kernel needed: a refused policy never reaches one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from guard.configfile import POLICY_MAX_BYTES, read_config
from guard.deny import DENY_MAX_BYTES, read_deny_file
from guard.errors import PolicyError
from guard.policy.fields import MAX_ENTRIES, MAX_SET_SIZE
from guard.policy.load import parse_policy, read_policy


def check(path: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    """`nodeguard check -c path` as an operator runs it."""
    return subprocess.run([sys.executable, "-m", "guard", "check", "-c", str(path)], capture_output=True,
                          text=True, timeout=timeout)


def refused(tmp_path: Path, res: subprocess.CompletedProcess, line: str) -> None:
    """Exit 2, exactly ``line`` on stderr, nothing on stdout, nothing written beside the policy."""
    assert res.returncode == 2 and res.stdout == "", res
    assert res.stderr == line + "\n", res.stderr
    assert os.listdir(tmp_path) == ["policy.yaml"]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return path


# --- lists whose every entry adds rules, chains or ports to walk --------------------------------------
def _limits(n: int) -> str:
    return "limits:\n" + "".join(f"  - {{name: l{i}, protocol: udp, ports: [{1000 + i}], per_source: 10/second}}\n"
                                 for i in range(n))


def _connlimit(n: int) -> str:
    return "connlimit:\n" + "".join(f"  - {{name: c{i}, ports: [{1000 + i}], per_source: 10}}\n" for i in range(n))


def _failsafe(n: int) -> str:
    return "failsafe:\n" + "".join(f"  - {{cidrs: [10.{i // 256}.{i % 256}.0/24], ports: [22]}}\n" for i in range(n))


def _interfaces(n: int) -> str:
    return "interfaces: [" + ", ".join(f"eth{i}" for i in range(n)) + "]\n"


def _synproxy(key: str, item: str):
    return lambda n: f"syn:\n  synproxy:\n    {key}: [" + ", ".join([item] * n) + "]\n"


LISTS = {  # field -> (its bound, a policy with n entries, the line the field's key is on)
    "limits": (MAX_ENTRIES["limits"], _limits, 1),
    "connlimit": (MAX_ENTRIES["connlimit"], _connlimit, 1),
    "failsafe": (MAX_ENTRIES["failsafe"], _failsafe, 1),
    "interfaces": (MAX_ENTRIES["interfaces"], _interfaces, 1),
    "syn.synproxy.ports": (MAX_ENTRIES["synproxy.ports"], _synproxy("ports", "443"), 3),
    "syn.synproxy.exclude_ports": (MAX_ENTRIES["port ranges"], _synproxy("exclude_ports", '"1-65535"'), 3),
    "syn.synproxy.forwarded_ports": (MAX_ENTRIES["port ranges"], _synproxy("forwarded_ports", '"30000-32767"'), 3),
}


@pytest.mark.parametrize("field", LISTS)
def test_a_list_over_its_bound_is_one_line_and_exit_2(tmp_path, field):
    most, policy, line = LISTS[field]
    path = write(tmp_path, policy(most * 4))  # 5,000 limits once stalled `check` for a minute
    refused(tmp_path, check(path), f"{path}:{line}: {field}: {most * 4} entries; at most {most}")


@pytest.mark.parametrize("field", LISTS)
def test_a_list_at_its_bound_is_a_policy(field):
    most, policy, _line = LISTS[field]
    parse_policy(policy(most), "p.yaml")
    with pytest.raises(PolicyError, match=rf"^p.yaml:\d: {field}: {most + 1} entries; at most {most}$"):
        parse_policy(policy(most + 1), "p.yaml")


# --- dynamic set sizes ----------------------------------------------------------------------------
SIZES = ["meter.size", "escalate.size", "deny.manual_size", "crowdsec.size"]


@pytest.mark.parametrize("field", SIZES)
def test_a_set_size_over_the_bound_is_one_line_and_exit_2(tmp_path, field):
    section, key = field.split(".")
    path = write(tmp_path, f"{section}:\n  {key}: 4194304\n")
    refused(tmp_path, check(path), f"{path}:2: {field}: Input should be less than or equal to {MAX_SET_SIZE}")


@pytest.mark.parametrize("field", SIZES)
def test_a_set_size_at_the_bound_is_a_policy(field):
    section, key = field.split(".")
    policy = parse_policy(f"{section}:\n  {key}: {MAX_SET_SIZE}\n", "p.yaml")
    assert getattr(getattr(policy, section), key) == MAX_SET_SIZE


# --- what `check` opens ----------------------------------------------------------------------------
def test_check_refuses_a_fifo_at_once(tmp_path):
    path = tmp_path / "policy.yaml"
    os.mkfifo(path)  # nobody writes to it: a blocking open would wait for ever
    refused(tmp_path, check(path, timeout=30), f"{path}: refusing: not a regular file")


def test_check_refuses_a_symlink_to_a_device_without_reading_it(tmp_path):
    path = tmp_path / "policy.yaml"
    path.symlink_to("/dev/zero")  # read to its end, it never ends
    refused(tmp_path, check(path, timeout=30), f"{path}: refusing: not a regular file")


def test_check_refuses_a_policy_over_the_size_bound(tmp_path):
    path = write(tmp_path, "backend: nft\n" + "#" * POLICY_MAX_BYTES + "\n")
    refused(tmp_path, check(path), f"{path}: larger than {POLICY_MAX_BYTES // 2**20} MiB: refusing to read it")


def _padded(size: int, head: str) -> str:
    """``head`` followed by a comment line that brings the text to exactly ``size`` bytes."""
    return head + "#" * (size - len(head) - 1) + "\n"


def test_a_policy_at_the_size_bound_is_read_by_every_reader(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(_padded(POLICY_MAX_BYTES, "icmp:\n  per_source: 7/second\n"))
    for trusted in (False, True):  # check's reader, and the one that also checks ownership (apply, run)
        assert read_policy(path, trusted=trusted)[0].icmp.per_source.count == 7
    with path.open("a") as f:
        f.write("#")
    for trusted in (False, True):
        with pytest.raises(PolicyError, match=rf"^{path}: larger than 4 MiB: refusing to read it$"):
            read_policy(path, trusted=trusted)


def test_a_deny_file_has_its_own_size_bound(tmp_path):
    path = tmp_path / "deny.txt"
    path.write_text(_padded(DENY_MAX_BYTES, "192.0.2.0/24\n"))
    assert list(read_deny_file(path)) == [(4, 0xC0000200, 24)]
    with path.open("a") as f:
        f.write("#")
    with pytest.raises(PolicyError, match=rf"^{path}: larger than 16 MiB: refusing to read it$"):
        read_deny_file(path)
    with pytest.raises(PolicyError, match="larger than 4 MiB"):  # what the policy file is held to
        read_config(path)


# --- numbers and URLs -----------------------------------------------------------------------------
HUGE = "9" * 400


@pytest.mark.parametrize("text, line, field", [
    (f"icmp:\n  per_source: {HUGE}/second\n", 2, "icmp.per_source"),
    (f"icmp:\n  per_source: {'0' * 5000}{HUGE}/hour\n", 2, "icmp.per_source"),
    (f"limits:\n  - name: a\n    protocol: udp\n    per_source: {HUGE}/minute\n", 4, "limits[0].per_source"),
], ids=["second", "leading-zeros", "limits"])
def test_a_rate_of_hundreds_of_digits_names_its_line_and_field(tmp_path, text, line, field):
    path = write(tmp_path, text)
    refused(tmp_path, check(path),
            f"{path}:{line}: {field}: rate must be at most 1000000/second (the iptables backend's ceiling)")


def test_a_burst_of_hundreds_of_digits_names_its_line_and_field(tmp_path):
    path = write(tmp_path, f"syn:\n  rate: 10/second burst {HUGE}\n")
    refused(tmp_path, check(path),
            f"{path}:2: syn.rate: burst must be at most 1000000 (the iptables backend's ceiling)")


@pytest.mark.parametrize("url, why", [
    ("http://[::1", "is not an http(s)://host[:port]/ URL: Invalid IPv6 URL"),
    ("http://[v1.x]/", "the host must be an IP address (IPv6 in brackets) or a DNS name"),
    ("http://lapi:99999/", "is not an http(s)://host[:port]/ URL: Port out of range 0-65535"),
    ("http://lapi:0/", "the port must be 1-65535"),
    ("http://lapi:/", "the port must be 1-65535"),
    ("http://:8080/", "the host must be an IP address (IPv6 in brackets) or a DNS name"),
    ("http://lapi_1/", "the host must be an IP address (IPv6 in brackets) or a DNS name"),
    ("ftp://lapi/", "the scheme must be http or https"),
    ("http://user@lapi/", "give only http(s)://host[:port]/ (no user, path, query or fragment)"),
    ("http://lapi/v1", "give only http(s)://host[:port]/ (no user, path, query or fragment)"),
    ("http://lapi/?", "give only http(s)://host[:port]/ (no user, path, query or fragment)"),
    ("http://la pi/", "is not an http(s)://host[:port]/ URL (printable ASCII, no spaces)"),
])
def test_a_crowdsec_url_urllib_could_not_use_is_one_line_and_exit_2(tmp_path, url, why):
    path = write(tmp_path, f'crowdsec:\n  url: "{url}"\n')
    refused(tmp_path, check(path), f"{path}:2: crowdsec.url: {url!r}{'' if why.startswith('is ') else ':'} {why}")


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/", "http://[::1]:8080/", "https://lapi.example:8443",
                                 "http://crowdsec-lapi.crowdsec.svc.cluster.local./"])
def test_a_crowdsec_url_urllib_can_use_is_a_policy(url):
    assert parse_policy(f'crowdsec:\n  url: "{url}"\n', "p.yaml").crowdsec.url == url
