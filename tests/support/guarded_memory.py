"""A page of readable memory right before one that faults, so C code reading past a buffer crashes the test."""

from __future__ import annotations

import contextlib
import ctypes
import mmap
from collections.abc import Iterator

PAGE = mmap.PAGESIZE


class GuardedPage:
    """Bytes are placed at the very end of the readable page and lent out as a memoryview."""

    def __init__(self) -> None:
        self.map = mmap.mmap(-1, 2 * PAGE)
        address = ctypes.addressof(ctypes.c_char.from_buffer(self.map))
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.mprotect(ctypes.c_void_p(address + PAGE), ctypes.c_size_t(PAGE), 0) != 0:
            raise OSError(ctypes.get_errno(), "mprotect")

    @contextlib.contextmanager
    def view(self, data: bytes) -> Iterator[memoryview]:
        """`data` ending at the guard page, for the duration of the `with` block."""
        assert len(data) <= PAGE
        self.map[PAGE - len(data):PAGE] = data
        with memoryview(self.map)[PAGE - len(data):PAGE] as view:
            yield view
