"""What the loaded agent keeps resident of the compiler: after compiling, the LLVM and clang libraries' code and
read-only data are handed back to the kernel (~85 MB of the agent's resident size otherwise)."""

from __future__ import annotations

from podspan_agent import loader


def _smaps_kb(ranges: list[tuple[int, int]]) -> tuple[int, int]:
    """(Size, Private_Clean) in kB of the mappings of this process that start at one of `ranges`' addresses:
    resident pages no other process maps (MADV_PAGEOUT leaves shared pages alone)."""
    starts = {start for start, _ in ranges}
    size = private = 0
    current = False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split(maxsplit=1)[0]
            if "-" in head and not head.endswith(":"):
                current = int(head.split("-")[0], 16) in starts
            elif current and head == "Size:":
                size += int(line.split()[1])
            elif current and head == "Private_Clean:":
                private += int(line.split()[1])
    return size, private


def test_compiler_libraries_are_not_kept_resident(probes: loader.Probes) -> None:
    del probes  # compiled and loaded by the session fixture
    size, private = _smaps_kb(loader._compiler_mappings())
    assert size > 10_000, "bcc maps libLLVM/libclang: their read-only mappings should be found"
    # Only pages no other process maps count (another agent or test process may share the rest).
    assert private < size // 10, f"{private} kB of {size} kB of the compiler's read-only mappings still resident"
