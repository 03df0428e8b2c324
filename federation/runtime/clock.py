"""How far this machine's clock may be off, as the kernel's NTP discipline says (adjtimex(2), Linux).

etcd's responses carry no time (their header has the cluster, member, revision and raft term only), so a
site cannot compare its clock with etcd's. What it can say honestly is the bound its own time daemon
(chrony, ntpd, systemd-timesyncd) keeps in the kernel: `maxerror`, the maximum error, while the clock is
synchronised. Unsynchronised, or off Linux, there is no estimate: None, never a made-up number.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

_STA_UNSYNC = 0x0040
_TIME_ERROR = 5


class _Timeval(ctypes.Structure):
    _fields_ = [("sec", ctypes.c_long), ("usec", ctypes.c_long)]


class _Timex(ctypes.Structure):
    """struct timex of <sys/timex.h> (glibc, 64-bit and 32-bit Linux alike: longs and ints)."""

    _fields_ = [
        ("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
        ("constant", ctypes.c_long), ("precision", ctypes.c_long), ("tolerance", ctypes.c_long),
        ("time", _Timeval), ("tick", ctypes.c_long), ("ppsfreq", ctypes.c_long), ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int), ("stabil", ctypes.c_long), ("jitcnt", ctypes.c_long), ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long), ("stbcnt", ctypes.c_long), ("tai", ctypes.c_int),
        ("_pad", ctypes.c_int * 11),
    ]  # fmt: skip


def clock_error() -> float | None:
    """The clock's maximum error in seconds while the kernel says it is synchronised, else None.

    Reads only (modes 0): needs no privilege and changes nothing.
    """
    libc = _libc()
    if libc is None:
        return None
    tx = _Timex()
    state = libc.adjtimex(ctypes.byref(tx))
    if state < 0 or state == _TIME_ERROR or tx.status & _STA_UNSYNC:
        return None
    return float(tx.maxerror) / 1e6


@functools.cache
def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
