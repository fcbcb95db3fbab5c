"""Policies the benches share; imports nothing of guard, so a bench can time guard's own imports."""

from __future__ import annotations

import ipaddress
import random


def big_allowlist(n: int = 10_000) -> str:
    """``n`` distinct allow CIDRs, half IPv4 /24s in 100.64.0.0/10, half IPv6 /64s in 2001:db8::/32, shuffled."""
    rnd = random.Random(42)
    v4 = rnd.sample(range(1 << 14), n // 2)
    cidrs = [str(ipaddress.ip_network((int(ipaddress.ip_address("100.64.0.0")) + (i << 8), 24))) for i in v4]
    v6 = rnd.sample(range(1 << 32), n - n // 2)
    cidrs += [str(ipaddress.ip_network((int(ipaddress.ip_address("2001:db8::")) + (i << 64), 64))) for i in v6]
    rnd.shuffle(cidrs)
    return "allow:\n  cidrs:\n" + "".join(f"    - \"{c}\"\n" for c in cidrs)


def deny_lines(n: int = 100_000) -> str:
    """A deny file of ``n`` lines as blocklists write them: a comment header, then 80 % IPv4 (/24s
    in 0.0.0.0/1, with one /16 in ten lines that also holds some of the /24s: overlaps to merge,
    and bare addresses) and 20 % IPv6 /48s in 2001:db8::/32, shuffled."""
    rnd = random.Random(20)
    n4 = n * 4 // 5
    lines = [str(ipaddress.IPv4Network((i << 8, 24))) for i in rnd.sample(range(1 << 23), n4 * 8 // 10)]
    lines += [str(ipaddress.IPv4Network((i << 16, 16))) for i in rnd.sample(range(1 << 15), n4 // 10)]
    lines += [str(ipaddress.IPv4Address(i)) for i in rnd.sample(range(1 << 31), n4 - len(lines))]
    base6 = int(ipaddress.ip_address("2001:db8::"))
    lines += [str(ipaddress.IPv6Network((base6 + (i << 80), 48))) for i in rnd.sample(range(1 << 16), n - n4)]
    rnd.shuffle(lines)
    return "# generated blocklist ; one prefix a line\n" + "\n".join(lines) + "\n"


def deny_hosts(n: int) -> str:
    """A deny file of ``n`` distinct random IPv4 addresses, one a line: nothing to merge, every line a
    prefix of its own (the list of the 1,000,000-line review, issue 20)."""
    rnd = random.Random(20)
    return "".join("%d.%d.%d.%d\n" % (a >> 24, a >> 16 & 255, a >> 8 & 255, a & 255)
                   for a in rnd.sample(range(1 << 32), n))


if __name__ == "__main__":  # a deny file written by a process of its own: the bench that asks stays small
    import sys

    sys.stdout.write({"lines": deny_lines, "hosts": deny_hosts}[sys.argv[1]](int(sys.argv[2])))
