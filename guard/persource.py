"""The sampler's per-source counts between windows, kept small.

A flood from random sources fills every ``counts`` set (in monitor mode six ``seen`` sets of 65,536
sources each), and each window's per-source packets are the counts now less those of the last read.
The last read is kept as two sorted arrays per set (16 bytes a source, where a dict of address
strings took ~200), and a set is read as a stream of (key, packets), never whole.

A source's key is its address as an int: IPv4's 32 bits, or the upper 64 bits of IPv6 (the
kernel counts IPv6 sources per /64).
"""

from __future__ import annotations

import ipaddress
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator


def key_of(address: str) -> int:
    """An address's key (IPv6: its /64)."""
    ip = ipaddress.ip_address(address)
    return int(ip) >> 64 if ip.version == 6 else int(ip)


def address(key: int, version: int) -> str:
    """The source a key stands for, as ``aggregate.source_key`` writes it."""
    return str(ipaddress.IPv6Address(key << 64) if version == 6 else ipaddress.IPv4Address(key))


class _Read:
    """One set's counts at a read: keys sorted, and the count of each."""

    __slots__ = ("keys", "counts")

    def __init__(self, keys: array, counts: array):
        self.keys, self.counts = keys, counts

    def get(self, key: int) -> int | None:
        i = bisect_left(self.keys, key)
        return self.counts[i] if i < len(self.keys) and self.keys[i] == key else None


_EMPTY = _Read(array("Q"), array("Q"))


class LastCounts:
    """The last read of every ``counts`` set, by set name."""

    def __init__(self) -> None:
        self._last: dict[str, _Read] = {}

    def since(self, name: str, now: Iterable[tuple[int, int]], quiet: list[int] | None = None
              ) -> Iterator[tuple[int, int]]:
        """(key, packets since the last read) of each source of set ``name`` read ``now`` (a count that
        went down was reset: all of it is new). Once consumed, ``now`` is the last read. ``quiet``: where
        sources that counted nothing go, left out of the last read (the caller removes them)."""
        before = self._last.get(name, _EMPTY)
        keys, counts = array("Q"), array("Q")
        for key, n in now:
            was = before.get(key)
            if quiet is not None and was == n:
                quiet.append(key)
            else:
                keys.append(key)
                counts.append(n)
            yield key, n - was if was is not None and n >= was else n
        order = sorted(range(len(keys)), key=keys.__getitem__)
        self._last[name] = _Read(array("Q", map(keys.__getitem__, order)), array("Q", map(counts.__getitem__, order)))

    def keep(self, names: Iterable[str]) -> None:
        """Forget the sets not in ``names`` (gone with a reload)."""
        wanted = set(names)
        self._last = {n: r for n, r in self._last.items() if n in wanted}
