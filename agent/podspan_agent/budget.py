"""Overhead budget: the agent measures its own CPU cost once a second (its process CPU time plus the in-kernel run
time of its BPF programs) and a controller sets the fraction of exchanges the kernel fully captures to stay within it.

`Controller` and `CostMeter` are pure (readings are passed in); `BpfStats` holds the kernel's run-time accounting on;
`Governor` ties them to the loaded programs.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import logging
import os
import platform

from podspan_agent import loader

log = logging.getLogger(__name__)

# bpf(2): BPF_ENABLE_STATS (5.8) with BPF_STATS_RUN_TIME returns an fd; the kernel counts run times while it is open.
_BPF_ENABLE_STATS = 32
_BPF_STATS_RUN_TIME = 0
_SYS_BPF = {"x86_64": 321, "aarch64": 280}
_BPF_ATTR_SIZE = 128  # zeroed beyond enable_stats.type: the kernel checks that unused attr bytes are zero
_SYSCTL = "/proc/sys/kernel/bpf_stats_enabled"


class BpfStats:
    """kernel.bpf_stats_enabled for as long as this object is open, through BPF_ENABLE_STATS: the kernel keeps
    counting while the fd lives and stops when it is closed or the agent dies, so the setting is never left on.
    `reason` says why run times are unavailable (then only userspace CPU is budgeted)."""

    def __init__(self) -> None:
        self._fd: int | None = None
        self.reason = ""
        number = _SYS_BPF.get(platform.machine())
        if number is None:
            self.reason = f"bpf(BPF_ENABLE_STATS) not wired for {platform.machine()}"
            return
        libc = ctypes.CDLL(None, use_errno=True)
        attr = (ctypes.c_uint8 * _BPF_ATTR_SIZE)()
        ctypes.c_uint32.from_buffer(attr, 0).value = _BPF_STATS_RUN_TIME
        fd = libc.syscall(number, _BPF_ENABLE_STATS, attr, _BPF_ATTR_SIZE)
        if fd >= 0:
            self._fd = fd
            return
        error = ctypes.get_errno()
        if _sysctl_on():
            return  # someone else keeps the counters on
        self.reason = f"kernel.bpf_stats_enabled unavailable (BPF_ENABLE_STATS: {errno.errorcode.get(error, error)})"

    @property
    def available(self) -> bool:
        return self._fd is not None or _sysctl_on()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _sysctl_on() -> bool:
    try:
        with open(_SYSCTL) as value:
            return value.read().strip() == "1"
    except OSError:
        return False


def process_cpu_ns() -> int:
    """CPU time of this process, every thread, user and system."""
    times = os.times()
    return round((times.user + times.system) * 1e9)


@dataclasses.dataclass(frozen=True, slots=True)
class Cost:
    """The agent's cost over one interval, in percent of one CPU."""

    userspace_percent: float
    bpf_percent: float

    @property
    def percent(self) -> float:
        return self.userspace_percent + self.bpf_percent


class CostMeter:
    """Cost between consecutive readings (wall clock, process CPU time, BPF run time; all ns, cumulative)."""

    def __init__(self) -> None:
        self._last: tuple[int, int, int] | None = None

    def update(self, wall_ns: int, cpu_ns: int, bpf_ns: int) -> Cost | None:
        """None for the first reading, or when no time passed."""
        last, self._last = self._last, (wall_ns, cpu_ns, bpf_ns)
        if last is None or wall_ns <= last[0]:
            return None
        elapsed = wall_ns - last[0]
        # A reloaded program counts from zero again: that interval's BPF time is unknown, not negative.
        return Cost(100.0 * max(0, cpu_ns - last[1]) / elapsed, 100.0 * max(0, bpf_ns - last[2]) / elapsed)


@dataclasses.dataclass(frozen=True, slots=True)
class ControlSettings:
    min_fraction: float = 0.01  # never below: a trickle of spans keeps showing what the traffic is
    margin: float = 0.9  # lowering aims this far below the budget
    max_cut: float = 0.1  # lowering at most divides the fraction by 10 per step (one noisy second cannot zero it)
    raise_below: float = 0.8  # raising only while the cost is below this share of the budget (hysteresis)
    raise_step: float = 0.05  # raising adds at most this much per step


class Controller:
    """The captured fraction, in [min_fraction, 1]: while over budget it is cut in proportion to the excess (at most
    tenfold per step); while well under it grows additively, never past the fraction the last cost predicts would
    still fit; in between it holds. Costs are assumed to grow with the fraction."""

    def __init__(self, budget_percent: float, settings: ControlSettings | None = None) -> None:
        if budget_percent <= 0:
            raise ValueError(f"budget must be positive, got {budget_percent}")
        self.budget_percent = budget_percent
        self.settings = settings or ControlSettings()
        self.fraction = 1.0

    @property
    def throttled(self) -> bool:
        return self.fraction < 1.0

    def update(self, cost_percent: float) -> float:
        s, budget, fraction = self.settings, self.budget_percent, self.fraction
        fits = fraction * s.margin * budget / cost_percent if cost_percent > 0 else 1.0
        if cost_percent > budget:
            fraction = max(s.min_fraction, fraction * s.max_cut, fits)
        elif cost_percent < s.raise_below * budget and fraction < 1.0:
            fraction = min(1.0, fraction + s.raise_step, max(fraction, fits))
        self.fraction = min(1.0, max(s.min_fraction, fraction))
        return self.fraction


class Governor:
    """One agent's budget at work: once a second it measures the agent's cost, updates the controller and writes the
    captured fraction to the kernel for the budgeted cgroups (the others stay at 1)."""

    def __init__(self, probes: loader.Probes) -> None:
        self._probes = probes
        self._stats: BpfStats | None = None
        self._meter = CostMeter()
        self._controller: Controller | None = None
        self._cgroups: set[int] = set()
        self._written = 1.0
        self.cost: Cost | None = None

    @property
    def fraction(self) -> float | None:
        """The captured fraction, None without a budget."""
        return self._controller.fraction if self._controller is not None else None

    @property
    def throttled(self) -> bool:
        return self._controller is not None and self._controller.throttled

    @property
    def scope(self) -> str:
        """What the cost covers."""
        if self._stats is None or self._stats.available:
            return "userspace CPU and BPF run time"
        return f"userspace CPU only: {self._stats.reason}"

    def health(self) -> tuple[float, float]:
        """(captured fraction, cost percent) for the agent's health metrics: (1, 0) without a budget."""
        return self.fraction or 1.0, self.cost.percent if self.cost is not None else 0.0

    def configure(self, budget_percent: float | None, cgroups: set[int]) -> None:
        """Budget `budget_percent` of one CPU (None: no budget) over the exchanges of `cgroups`."""
        if budget_percent is None:
            self.close()
            return
        if self._stats is None:
            self._stats = BpfStats()
            if not self._stats.available:
                log.warning("overhead budget: %s", self.scope)
        if self._controller is None:
            self._controller = Controller(budget_percent)
        self._controller.budget_percent = budget_percent
        for cgroup_id in self._cgroups - cgroups:
            self._probes.set_capture_fraction(cgroup_id, 1.0)
        for cgroup_id in cgroups - self._cgroups:
            self._probes.set_capture_fraction(cgroup_id, self._written)
        self._cgroups = set(cgroups)

    def tick(self, now_ns: int) -> None:
        if self._controller is None:
            return
        self.cost = self._meter.update(now_ns, process_cpu_ns(), self._probes.bpf_run_time_ns())
        if self.cost is None:
            return
        fraction = self._controller.update(self.cost.percent)
        if fraction != self._written:
            self._written = fraction
            for cgroup_id in self._cgroups:
                self._probes.set_capture_fraction(cgroup_id, fraction)

    def close(self) -> None:
        """No budget: everything is captured again."""
        for cgroup_id in self._cgroups:
            self._probes.set_capture_fraction(cgroup_id, 1.0)
        self._cgroups, self._written, self._controller, self.cost = set(), 1.0, None, None
        self._meter = CostMeter()
        if self._stats is not None:
            self._stats.close()
            self._stats = None
