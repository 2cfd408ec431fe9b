"""What the kernel says is loaded and attached, through bpftool: the ground truth for leak checks."""

from __future__ import annotations

import collections
import json
import subprocess
from typing import Any


def _show(*what: str) -> list[dict[str, Any]]:
    out = subprocess.run(["bpftool", *what, "show", "--json"], capture_output=True, text=True, check=True).stdout
    return list(json.loads(out or "[]"))


def program_ids() -> set[int]:
    """Ids of every BPF program loaded in the kernel."""
    return {int(prog["id"]) for prog in _show("prog")}


def attached_programs(pid: int) -> set[int]:
    """Ids of the programs process `pid` holds attached to tracepoints/kprobes (perf-event links)."""
    return {int(link["prog_id"]) for link in _show("perf") if link.get("pid") == pid}


def uprobe_files(pid: int) -> collections.Counter[str]:
    """Files process `pid` holds uprobes or uretprobes on, and how many on each."""
    return collections.Counter(str(link["filename"]) for link in _show("perf")
                               if link.get("pid") == pid and link.get("fd_type") in ("uprobe", "uretprobe"))
