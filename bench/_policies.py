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
