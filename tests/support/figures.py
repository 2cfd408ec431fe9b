"""Figures the reliability tests print (`FIGURE scenario: key=value ...`, seen with pytest -s), for
docs/reliability.md."""

from __future__ import annotations


def report(scenario: str, **values: object) -> None:
    print(f"FIGURE {scenario}: " + " ".join(f"{k}={v}" for k, v in values.items()))
