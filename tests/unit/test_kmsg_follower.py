"""The agent's follower of /dev/kmsg (probes/kernlog.py: KmsgFollower), on this machine's
real kernel log: it holds what a fresh read would return, a run forked from it sees the log
as read up to its fork without reading the device, and a record logged later is the next
catch-up's. The records written here carry a mark of their own, never an Xid's, so that no
later gpu.xid run on this machine reads them as a GPU fault."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from nodecheck.probes import kernlog

KMSG = Path("/dev/kmsg")

pytestmark = pytest.mark.skipif(
    not (os.access(KMSG, os.R_OK) and os.access(KMSG, os.W_OK)),
    reason="/dev/kmsg not readable and writable here (run as root)",
)


def log_line(text: str) -> None:
    """One record into the kernel log (/dev/kmsg takes a write as one record)."""
    fd = os.open(KMSG, os.O_WRONLY)
    try:
        os.write(fd, f"nodecheck test: {text}\n".encode())
    finally:
        os.close(fd)


def in_a_child(work: Callable[[], str]) -> str:
    """What `work` returns when run in a forked child (a run, a pool member)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(read_fd)
            os.write(write_fd, work().encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    said = b""
    while chunk := os.read(read_fd, 4096):
        said += chunk
    os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return said.decode()


@pytest.fixture
def mark() -> str:
    return f"follower-{uuid.uuid4().hex}"


def test_the_follower_holds_what_a_fresh_read_returns(mark):
    follower = kernlog.KmsgFollower(KMSG, (mark,))
    log_line(f"{mark} one")
    follower.catch_up()
    fresh = kernlog.read_kernel_log(KMSG, keep=(mark,))
    followed = follower.log()
    # The log may grow between the two reads (and lose its oldest records): compare the
    # records both hold.
    common = sorted(set(fresh.positions) & set(followed.positions))
    assert len(common) > 0.9 * len(fresh.positions)
    assert [p for p in followed.positions if common[0] <= p <= common[-1]] == common
    assert [r.text for r in followed.records] == [f"nodecheck test: {mark} one"]
    assert followed.records == tuple(r for r in fresh.records if r.pos <= common[-1])
    assert followed.kind == "kmsg" and followed.lost_before == ()


def test_a_forked_run_sees_the_log_up_to_its_fork_without_reading_the_device(mark):
    follower = kernlog.KmsgFollower(KMSG, (mark,))
    log_line(f"{mark} before the fork")
    follower.catch_up()

    def the_run() -> str:  # sees the records read so far; its catch_up reads nothing
        log_line(f"{mark} after the fork")
        follower.catch_up()
        return "\n".join(r.text for r in follower.log().records)

    assert in_a_child(the_run).splitlines() == [f"nodecheck test: {mark} before the fork"]
    follower.catch_up()  # the follower itself reads on: the next run sees the later record
    assert [r.text for r in follower.log().records] == [
        f"nodecheck test: {mark} before the fork",
        f"nodecheck test: {mark} after the fork",
    ]


def test_read_kernel_log_takes_the_followed_device_from_memory(mark, monkeypatch):
    """In a run forked from the follower (the agent), the log comes from memory."""
    monkeypatch.setattr(kernlog, "_followed", None)
    monkeypatch.setattr(kernlog, "_adopt_on_read", False)
    kernlog.follow(KMSG, (mark,))
    log_line(f"{mark} seen")
    kernlog.catch_up()
    monkeypatch.setattr(kernlog._followed, "owner", os.getppid())  # as if forked from it
    log_line(f"{mark} after the fork")  # the next run's to see
    opened = []
    real_open = os.open
    monkeypatch.setattr(
        kernlog.os, "open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k)
    )
    log = kernlog.read_kernel_log(KMSG, keep=(mark,))
    assert opened == []
    assert [r.text for r in log.records] == [f"nodecheck test: {mark} seen"]
    # Asked for other marks, or another source, the reader reads it itself.
    other = kernlog.read_kernel_log(KMSG, keep=("NVRM: Xid",))
    assert opened == [KMSG] and all(mark not in r.text for r in other.records)


def test_a_long_lived_child_follows_the_log_itself_from_its_first_read(mark, monkeypatch):
    """A probe-pool member (follow_here) reads what was logged after it was forked; a run
    forked from the follower keeps the log as it was at its fork."""
    monkeypatch.setattr(kernlog, "_followed", None)
    monkeypatch.setattr(kernlog, "_adopt_on_read", False)
    kernlog.follow(KMSG, (mark,))

    def the_member() -> str:
        kernlog.follow_here()
        reports = []
        for text in ("first", "second"):
            log_line(f"{mark} {text}")
            seen = [r.text for r in kernlog.read_kernel_log(KMSG, keep=(mark,)).records]
            reports.append("|".join(seen))
        return "\n".join(reports)

    first, second = in_a_child(the_member).splitlines()
    assert first == f"nodecheck test: {mark} first"
    assert second == f"nodecheck test: {mark} first|nodecheck test: {mark} second"
