"""Attach a two-instruction program to tcx ingress of a device and hold it until stdin closes.

Usage (in the test's namespace): ``python tcx_hold.py DEV NAME``; prints ``attached <prog id>`` once
the link exists. A tcx link lives as long as its fd: when this process exits, the program is gone.
iproute2 6.1 cannot attach tcx, so the bpf(2) calls are made here (the way Cilium attaches on 6.6+).
"""

from __future__ import annotations

import ctypes
import socket
import struct
import sys

sys.path.insert(0, __file__.rsplit("/tests/", 1)[0])
from guard import tcx  # noqa: E402

BPF_PROG_LOAD, BPF_LINK_CREATE = 5, 28
BPF_PROG_TYPE_SCHED_CLS = 3
# r0 = -1 (TCX_NEXT: go on to whatever comes next); exit
INSNS = struct.pack("=BBhi", 0xB7, 0, 0, -1) + struct.pack("=BBhi", 0x95, 0, 0, 0)


def main() -> None:
    dev, name = sys.argv[1], sys.argv[2].encode()[:15]
    insns = ctypes.create_string_buffer(INSNS, len(INSNS))
    lic = ctypes.create_string_buffer(b"GPL")
    attr = ctypes.create_string_buffer(128)
    # prog_type, insn_cnt, insns, license, log_level, log_size, log_buf, kern_version, prog_flags,
    # prog_name[16], prog_ifindex, expected_attach_type
    struct.pack_into("=IIQQIIQII16sII", attr, 0, BPF_PROG_TYPE_SCHED_CLS, len(INSNS) // 8, ctypes.addressof(insns),
                     ctypes.addressof(lic), 0, 0, 0, 0, 0, name, 0, tcx.BPF_TCX_INGRESS)
    prog_fd = tcx._bpf(BPF_PROG_LOAD, attr)
    attr = ctypes.create_string_buffer(128)
    struct.pack_into("=IIII", attr, 0, prog_fd, socket.if_nametoindex(dev), tcx.BPF_TCX_INGRESS, 0)
    link_fd = tcx._bpf(BPF_LINK_CREATE, attr)
    info = ctypes.create_string_buffer(80)
    attr = ctypes.create_string_buffer(128)
    struct.pack_into("=IIQ", attr, 0, prog_fd, 80, ctypes.addressof(info))
    tcx._bpf(15, attr)  # BPF_OBJ_GET_INFO_BY_FD: the id the kernel gave the program
    print(f"attached {struct.unpack_from('=I', info, 4)[0]}", flush=True)
    sys.stdin.read()
    del link_fd  # the process exit closes it, and the kernel detaches the program


if __name__ == "__main__":
    main()
