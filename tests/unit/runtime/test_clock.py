"""The clock error bound comes from the kernel, or is None: never a made-up number."""

from __future__ import annotations

import ctypes

from federation.runtime import clock


def test_the_bound_is_the_kernels_or_none() -> None:
    got = clock.clock_error()
    libc = clock._libc()
    assert libc is not None  # Linux
    tx = clock._Timex()
    state = libc.adjtimex(ctypes.byref(tx))
    if state == 5 or tx.status & 0x40:
        assert got is None  # not synchronised: no estimate
    else:
        assert got is not None
        assert got >= 0


def test_the_structure_is_as_large_as_the_kernels() -> None:
    # glibc's struct timex is 208 bytes on 64-bit Linux; a shorter one would let the kernel write past it.
    assert ctypes.sizeof(clock._Timex) >= 208 or ctypes.sizeof(ctypes.c_long) == 4
