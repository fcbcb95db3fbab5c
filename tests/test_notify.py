"""guard/notify.py against a real AF_UNIX datagram socket standing in for the service manager.

(tests/test_unit_file.py also runs it under a real systemd: Type=notify, reload, watchdog.)
"""

from __future__ import annotations

import os
import socket
import time

import pytest

from guard.notify import Notifier, watchdog_interval


@pytest.fixture(params=["path", "abstract"])
def manager(request, tmp_path):
    """A datagram socket like systemd's notify socket; yields (NOTIFY_SOCKET value, receive())."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        where = str(tmp_path / "notify")
        sock.bind(where)
    else:
        name = f"nodeguard-test-{os.getpid()}-{time.monotonic_ns()}"
        sock.bind("\0" + name)
        where = "@" + name
    sock.settimeout(2)

    def receive() -> list[str]:
        return sock.recv(4096).decode().split("\n")

    yield where, receive
    sock.close()


def test_ready_with_status_is_one_datagram(manager):
    where, receive = manager
    n = Notifier(env={"NOTIFY_SOCKET": where})
    assert n.enabled and n.ready("protecting eth0")
    assert receive() == ["READY=1", "STATUS=protecting eth0"]


def test_watchdog_stopping_status(manager):
    where, receive = manager
    n = Notifier(env={"NOTIFY_SOCKET": where})
    n.watchdog()
    n.stopping()
    n.status("3 repairs")
    assert [receive(), receive(), receive()] == [["WATCHDOG=1"], ["STOPPING=1"], ["STATUS=3 repairs"]]


def test_reloading_carries_the_monotonic_clock(manager):
    where, receive = manager
    n = Notifier(env={"NOTIFY_SOCKET": where})
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    n.reloading("reloading /etc/nodeguard/config.yaml")
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    msg = receive()
    assert msg[0] == "RELOADING=1"
    assert msg[1].startswith("MONOTONIC_USEC=") and before <= int(msg[1].split("=")[1]) <= after
    assert msg[2] == "STATUS=reloading /etc/nodeguard/config.yaml"


def test_a_newline_in_a_status_cannot_inject_another_assignment(manager):
    where, receive = manager
    Notifier(env={"NOTIFY_SOCKET": where}).status("contested by evil\nREADY=1\x1b[31m")
    msg = receive()
    assert msg == ["STATUS=contested by evil READY=1 [31m"]


def test_without_notify_socket_every_call_is_a_no_op():
    n = Notifier(env={})
    assert not n.enabled
    assert n.ready("x") is False and n.watchdog() is False and n.reloading() is False


def test_a_vanished_manager_never_raises(tmp_path):
    n = Notifier(env={"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert n.enabled and n.ready() is False and n.watchdog() is False


def test_unsupported_address_is_not_used():
    assert not Notifier(env={"NOTIFY_SOCKET": "vsock:2:1234"}).enabled


def test_watchdog_interval():
    me = os.getpid()
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(me)}) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(me + 1)}) is None  # a child's copy
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None


def test_a_manager_that_stops_reading_never_blocks_the_sender(tmp_path):
    """A full receive queue (a stalled manager) loses messages; the main loop must not hang on it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    n = Notifier(env={"NOTIFY_SOCKET": str(tmp_path / "notify")})
    start = time.monotonic()
    results = [n.watchdog() for _ in range(5000)]  # far more than any datagram queue holds
    assert time.monotonic() - start < 5
    assert results[0] is True and results[-1] is False
    sock.close()
