"""Coverage-guided fuzzing (atheris/libFuzzer) of one protocol parser, as the registry builds it.

    .venv/bin/python -m tests.fuzz.fuzz_parsers PROTOCOL [libFuzzer flags] [CORPUS_DIR ...]

e.g. `... postgresql -runs=1000000 -max_len=8192 /tmp/pg tests/fuzz/corpus/postgresql`: libFuzzer
adds new inputs to the first directory. With none it starts from tests/fuzz/corpus/PROTOCOL and
writes to a fresh temporary directory. A crash (an exception
escaping feed/flush/detect, or a scenario.Violation) is saved as ./crash-<sha1>. The input format
and the invariants are in tests/fuzz/scenario.py.
"""

from __future__ import annotations

import pathlib
import sys
import tempfile

import atheris

# Coverage is collected from the parsers only; everything the registry imports is instrumented.
with atheris.instrument_imports(include=["podspan_agent.protocols"]):
    from podspan_agent.protocols import registry  # noqa: F401  (imported here to be instrumented)

from tests.fuzz import scenario

CORPUS = pathlib.Path(__file__).resolve().parent / "corpus"


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
        raise SystemExit(__doc__)
    protocol = scenario.spec(sys.argv[1]).name
    flags = sys.argv[2:]
    if not any(not flag.startswith("-") for flag in flags):
        flags += [tempfile.mkdtemp(prefix=f"podspan-fuzz-{protocol}-"), str(CORPUS / protocol)]

    def one_input(data: bytes) -> None:
        scenario.run(protocol, data)

    # libFuzzer runs argv[0] through the shell for -merge and -fork: make it this same command.
    atheris.Setup([f"{sys.executable} -m tests.fuzz.fuzz_parsers {protocol}", *flags], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
