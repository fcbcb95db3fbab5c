"""The tcx ingress programs of a device, asked of the kernel by bpf(2).

Since 6.6, tc BPF programs can attach through tcx (bpf links, no qdisc); Cilium does so whenever the
kernel has it. tcx runs where tc ingress runs, before netdev ingress, but neither ``tc filter show``
nor ``ip link`` lists it (iproute2 6.1), and rtnetlink does not carry it: only BPF_PROG_QUERY does.

bpf(2) is refused in the systemd unit's sandbox (``SystemCallFilter=~@privileged``) and a program's
name needs CAP_SYS_ADMIN: either is an answer (``Refused``, or a program without a name), never a crash.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
from dataclasses import dataclass

BPF_PROG_GET_FD_BY_ID, BPF_OBJ_GET_INFO_BY_FD, BPF_PROG_QUERY = 13, 15, 16
BPF_TCX_INGRESS = 46
_SYS_BPF = {"x86_64": 321, "aarch64": 280, "ppc64le": 361, "s390x": 351, "riscv64": 280}
_ATTR_SIZE = 128  # larger than every command's part of union bpf_attr used here; the tail stays zero
_INFO_SIZE = 80  # struct bpf_prog_info up to and including name[16]
_MAX_PROGS = 64

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class Refused(Exception):
    """bpf(2) is not allowed here (a sandbox, no CAP_NET_ADMIN) or does not exist on this machine."""


@dataclass(frozen=True)
class TcxProgram:
    id: int
    name: str | None  # None: the kernel would not open the program for us (needs CAP_SYS_ADMIN)


def _bpf(cmd: int, attr: ctypes.Array) -> int:
    nr = _SYS_BPF.get(platform.machine())
    if nr is None:
        raise Refused(f"bpf(2) number unknown on {platform.machine()}")
    ret = _libc.syscall(ctypes.c_long(nr), ctypes.c_int(cmd), attr, ctypes.c_uint(len(attr)))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


def ingress_programs(ifindex: int) -> list[TcxProgram]:
    """The programs on tcx ingress of ``ifindex``, in the order they run. A kernel without tcx: none."""
    ids = (ctypes.c_uint32 * _MAX_PROGS)()
    attr = ctypes.create_string_buffer(_ATTR_SIZE)
    # query: target_ifindex, attach_type, query_flags, attach_flags, prog_ids (ptr), prog_cnt
    struct.pack_into("=IIII Q I", attr, 0, ifindex, BPF_TCX_INGRESS, 0, 0, ctypes.addressof(ids), _MAX_PROGS)
    try:
        _bpf(BPF_PROG_QUERY, attr)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:  # more than _MAX_PROGS: the first ones were filled in
            pass
        elif exc.errno in (errno.EINVAL, errno.ENODEV):  # no tcx in this kernel, or the device went away
            return []
        else:
            raise Refused(f"bpf(BPF_PROG_QUERY): {exc.strerror}") from None
    count = min(struct.unpack_from("=I", attr, 24)[0], _MAX_PROGS)
    return [TcxProgram(ids[i], program_name(ids[i])) for i in range(count)]


def program_name(prog_id: int) -> str | None:
    """The name the program was loaded with (at most 15 bytes), or None when the kernel will not say."""
    attr = ctypes.create_string_buffer(_ATTR_SIZE)
    struct.pack_into("=I", attr, 0, prog_id)
    try:
        fd = _bpf(BPF_PROG_GET_FD_BY_ID, attr)
    except (OSError, Refused):
        return None
    try:
        info = ctypes.create_string_buffer(_INFO_SIZE)
        attr = ctypes.create_string_buffer(_ATTR_SIZE)
        struct.pack_into("=IIQ", attr, 0, fd, _INFO_SIZE, ctypes.addressof(info))
        try:
            _bpf(BPF_OBJ_GET_INFO_BY_FD, attr)
        except OSError:
            return None
        return info.raw[64:80].split(b"\0", 1)[0].decode("utf-8", "replace") or None
    finally:
        os.close(fd)
