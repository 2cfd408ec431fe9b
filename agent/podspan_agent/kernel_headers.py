"""Find kernel headers for bcc: the host's own, else a packaged fallback merged into one tree.

bcc compiles against `/lib/modules/$(uname -r)/build` or the single directory
named by `BCC_KERNEL_SOURCE`. Debian splits headers into an arch half
(`linux-headers-*-amd64`: generated files, config) and a common half
(`linux-headers-*-common`); we merge them with symlinks so one directory has both.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import platform
import re

FALLBACK_ROOT_ENV = "PODSPAN_FALLBACK_HEADERS"
CACHE_DIR_ENV = "PODSPAN_CACHE_DIR"
_DEFAULT_FALLBACK_ROOT = "/usr/src"
_DEFAULT_CACHE_DIR = "/var/cache/podspan"

# uname machine -> (Debian package arch suffix, kernel arch directory)
_ARCHES = {"x86_64": ("amd64", "x86"), "aarch64": ("arm64", "arm64")}


class HeadersNotFound(RuntimeError):
    """Neither host nor fallback kernel headers could be found."""


@dataclasses.dataclass(frozen=True, slots=True)
class HeaderSource:
    kind: str  # "host" or "fallback"
    path: str

    def describe(self) -> str:
        return f"{self.kind} kernel headers at {self.path}"


def resolve(release: str | None = None, modules_root: str = "/lib/modules") -> HeaderSource:
    """Pick the headers bcc will use and, for a fallback, point BCC_KERNEL_SOURCE at them."""
    release = release or platform.release()
    if "BCC_KERNEL_SOURCE" in os.environ:
        return HeaderSource("env", os.environ["BCC_KERNEL_SOURCE"])
    host = pathlib.Path(modules_root, release, "build")
    if (host / "include" / "generated" / "autoconf.h").exists():
        return HeaderSource("host", str(host))
    pkg_arch, kernel_arch = _ARCHES.get(platform.machine(), ("amd64", "x86"))
    root = pathlib.Path(os.environ.get(FALLBACK_ROOT_ENV, _DEFAULT_FALLBACK_ROOT))
    pair = _newest_pair(root, pkg_arch)
    if pair is None:
        raise HeadersNotFound(
            f"no kernel headers: {host} is missing and no linux-headers-*-{pkg_arch} with its "
            f"-common twin is under {root}. Install them (Debian: apt-get install linux-headers-{pkg_arch}) "
            f"or set {FALLBACK_ROOT_ENV} to a directory holding them."
        )
    arch_dir, common_dir = pair
    merged = pathlib.Path(os.environ.get(CACHE_DIR_ENV, _DEFAULT_CACHE_DIR), "kernel-src", arch_dir.name)
    merge(merged, [common_dir, arch_dir], real_dirs=("include", f"arch/{kernel_arch}/include"))
    os.environ["BCC_KERNEL_SOURCE"] = str(merged)
    return HeaderSource("fallback", str(merged))


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", name))


def _newest_pair(root: pathlib.Path, pkg_arch: str) -> tuple[pathlib.Path, pathlib.Path] | None:
    suffix = f"-{pkg_arch}"
    candidates = sorted(
        (d for d in root.glob(f"linux-headers-*{suffix}") if d.is_dir()),
        key=lambda d: _version_key(d.name),
        reverse=True,
    )
    for arch_dir in candidates:
        common = arch_dir.with_name(arch_dir.name[: -len(suffix)] + "-common")
        if (arch_dir / "include" / "generated").is_dir() and (common / "include").is_dir():
            return arch_dir, common
    return None


def merge(dest: pathlib.Path, layers: list[pathlib.Path], real_dirs: tuple[str, ...]) -> None:
    """Build `dest` as symlinks into `layers` (later layers win), as real
    directories along every path in `real_dirs` so their contents combine.
    Idempotent: links are replaced, never duplicated."""
    prefixes = {"/".join(p.split("/")[: i + 1]) for p in real_dirs for i in range(p.count("/") + 1)}
    _merge_level(dest, layers, "", prefixes)


def _merge_level(dest: pathlib.Path, layers: list[pathlib.Path], rel: str, prefixes: set[str]) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    winners: dict[str, pathlib.Path] = {}
    for layer in layers:
        src = layer / rel if rel else layer
        if src.is_dir():
            for entry in src.iterdir():
                winners[entry.name] = entry
    for name, source in winners.items():
        child_rel = f"{rel}/{name}" if rel else name
        target = dest / name
        if child_rel in prefixes:
            if target.is_symlink():
                target.unlink()
            _merge_level(target, layers, child_rel, prefixes)
            continue
        if target.is_symlink() or target.exists():
            if target.is_symlink() and os.readlink(target) == str(source):
                continue
            target.unlink()
        target.symlink_to(source)
