"""Project layout rules that imports depend on."""

from __future__ import annotations

import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_source_folders_are_not_packages() -> None:
    # A package named `operator` would shadow the standard library module.
    for folder in ("operator", "agent"):
        assert not (ROOT / folder / "__init__.py").exists(), f"{folder}/__init__.py must not exist"


def test_parsers_import_neither_bcc_nor_opentelemetry() -> None:
    for source in (ROOT / "agent" / "podspan_agent" / "protocols").glob("*.py"):
        text = source.read_text()
        assert "import bcc" not in text and "opentelemetry" not in text, source.name
