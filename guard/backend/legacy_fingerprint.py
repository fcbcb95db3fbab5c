"""Cheap change detection for iptables-legacy, which sends no events: a fingerprint of its tables
read with two getsockopt calls per table, no process spawned (the watcher polls it)."""

from __future__ import annotations

import ctypes
import functools
import hashlib
import socket
import struct

from ..probe import legacy_tables as _legacy_tables

_SO_GET_INFO, _SO_GET_ENTRIES = 64, 65  # IPT_SO_* == IP6T_SO_*


class _Counters(ctypes.Structure):
    _fields_ = [("pcnt", ctypes.c_uint64), ("bcnt", ctypes.c_uint64)]


class _IptIp(ctypes.Structure):  # struct ipt_ip
    _fields_ = [("addrs", ctypes.c_uint32 * 4), ("ifaces", ctypes.c_ubyte * 64), ("proto", ctypes.c_uint16),
                ("flags", ctypes.c_uint8), ("invflags", ctypes.c_uint8)]


class _Ip6tIp6(ctypes.Structure):  # struct ip6t_ip6
    _fields_ = [("addrs", ctypes.c_ubyte * 64), ("ifaces", ctypes.c_ubyte * 64), ("proto", ctypes.c_uint16),
                ("tos", ctypes.c_uint8), ("flags", ctypes.c_uint8), ("invflags", ctypes.c_uint8)]


def _entry(ip: type) -> type:  # struct ipt_entry / ip6t_entry
    return type("_Entry", (ctypes.Structure,), {"_fields_": [
        ("ip", ip), ("nfcache", ctypes.c_uint), ("target_offset", ctypes.c_uint16), ("next_offset", ctypes.c_uint16),
        ("comefrom", ctypes.c_uint), ("counters", _Counters)]})


class _GetInfo(ctypes.Structure):  # struct ipt_getinfo
    _fields_ = [("name", ctypes.c_char * 32), ("valid_hooks", ctypes.c_uint), ("hook_entry", ctypes.c_uint * 5),
                ("underflow", ctypes.c_uint * 5), ("num_entries", ctypes.c_uint), ("size", ctypes.c_uint)]


_ENTRY = {4: _entry(_IptIp), 6: _entry(_Ip6tIp6)}
_ENTRIES_HEADER = 40  # struct ipt_get_entries: name[32], size, then 8-aligned entries


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def legacy_fingerprint() -> tuple:
    """A fingerprint of every iptables-legacy table's rules, in order, without their counters.

    Two getsockopt calls per existing table (IPT_SO_GET_INFO, IPT_SO_GET_ENTRIES) and a hash,
    no process spawned: the watcher polls this and runs the full comparison only when it
    changes. Only tables that exist are asked about: asking would instantiate a missing one.
    """
    out = []
    libc = _libc()
    for version, fam, level in ((4, socket.AF_INET, socket.IPPROTO_IP), (6, socket.AF_INET6, socket.IPPROTO_IPV6)):
        tables = sorted(_legacy_tables(version))
        if not tables:
            continue
        entry = _ENTRY[version]
        counters_at, counters_len = entry.counters.offset, ctypes.sizeof(_Counters)
        next_at = entry.next_offset.offset
        with socket.socket(fam, socket.SOCK_RAW, socket.IPPROTO_RAW) as s:
            for name in tables:
                info = _GetInfo(name=name.encode())
                n = ctypes.c_uint(ctypes.sizeof(info))
                if libc.getsockopt(s.fileno(), level, _SO_GET_INFO, ctypes.byref(info), ctypes.byref(n)) != 0:
                    out.append((version, name, "error", ctypes.get_errno()))
                    continue
                buf = ctypes.create_string_buffer(_ENTRIES_HEADER + info.size)
                buf[:32] = name.encode().ljust(32, b"\0")
                struct.pack_into("=I", buf, 32, info.size)
                n = ctypes.c_uint(len(buf))
                if libc.getsockopt(s.fileno(), level, _SO_GET_ENTRIES, buf, ctypes.byref(n)) != 0:
                    out.append((version, name, "error", ctypes.get_errno()))  # changed in between: differs anyway
                    continue
                blob = bytearray(buf.raw[_ENTRIES_HEADER:_ENTRIES_HEADER + info.size])
                off = 0
                while off + ctypes.sizeof(entry) <= len(blob):
                    blob[off + counters_at:off + counters_at + counters_len] = bytes(counters_len)
                    step = struct.unpack_from("=H", blob, off + next_at)[0]
                    if step == 0:
                        break
                    off += step
                out.append((version, name, tuple(info.hook_entry), tuple(info.underflow),
                            hashlib.sha256(bytes(blob)).hexdigest()))
    return tuple(out)
