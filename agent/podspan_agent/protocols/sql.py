"""SQL text helpers for the database parsers: literal-free query text, operation and table.

Captured queries are often cut off by the capture size, so everything here works on
partial text: an unterminated string or comment simply runs to the end.
"""

from __future__ import annotations

import re
from typing import NamedTuple

# One alternation, scanned left to right, so a quote inside a comment (or a number
# inside an identifier) is never mistaken for the start of something else.
_TOKEN = re.compile(
    r"""
      (?P<comment>--[^\n]*|/\*.*?(?:\*/|\Z))
    | (?P<string>(?:[EeBbXxNn]|[Uu]&)?'(?:[^'\\]|\\.|'')*(?:'|\Z))
    | (?P<dollar>\$(?P<tag>(?:[A-Za-z_]\w*)?)\$.*?(?:\$(?P=tag)\$|\Z))
    | (?P<dquoted>"(?:[^"\\]|\\.|"")*(?:"|\Z))
    | (?P<backtick>`[^`]*(?:`|\Z))
    | (?P<word>[A-Za-z_][\w$]*)
    | (?P<param>\$\d+|:[A-Za-z_]\w*)
    | (?P<number>0[xX][0-9A-Fa-f]+|0[bB][01]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
    | (?P<space>\s+)
    """,
    re.DOTALL | re.VERBOSE,
)
_IN_LIST = re.compile(r"\b(IN)\s*\(\s*\?(?:\s*,\s*\?)*\s*\)", re.IGNORECASE)
# Multi-row VALUES lists differ only in their row count: keep one row so the text stays low-cardinality.
_VALUE_ROWS = re.compile(r"(\(\s*\?(?:\s*,\s*\?)*\s*\))(?:\s*,\s*\1)+")
_BOOLEANS = frozenset({"TRUE", "FALSE"})
# Bounds the work done on absurdly long inputs; capture already limits them to a few KiB.
_SCAN_LIMIT = 65536


def sanitize(query: str, max_len: int = 2048, *, double_quoted_strings: bool = False) -> str:
    """Replace literals by `?`, drop comments, collapse whitespace and `IN (...)` lists.

    `double_quoted_strings` treats "..." as a string literal (MySQL's default) instead of an
    identifier (standard SQL, PostgreSQL).
    """
    text = query[:_SCAN_LIMIT]
    parts: list[str] = []
    pos = 0
    for match in _TOKEN.finditer(text):
        # Characters the pattern does not match (operators, punctuation) are kept verbatim.
        if match.start() > pos:
            parts.append(text[pos : match.start()])
        pos = match.end()
        kind = match.lastgroup
        quoted = kind in ("dquoted", "backtick")
        # An unterminated quoted identifier is more likely cut-off text than a name: hide it too.
        unterminated = quoted and (len(match.group()) < 2 or match.group()[-1] != match.group()[0])
        literal = kind in ("string", "dollar", "number") or (kind == "dquoted" and double_quoted_strings)
        if unterminated or literal:
            parts.append("?")
        elif kind in ("comment", "space"):
            parts.append(" ")
        elif kind == "word" and match.group().upper() in _BOOLEANS:
            parts.append("?")
        else:
            parts.append(match.group())
    parts.append(text[pos:])
    text = " ".join("".join(parts).split())
    text = _IN_LIST.sub(lambda m: f"{m.group(1)} (?)", text)
    text = _VALUE_ROWS.sub(r"\1", text)
    return text[:max_len]


_KEYWORD = re.compile(r"[A-Za-z]+")
_MAIN_STATEMENTS = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE", "MERGE"})


class Statement(NamedTuple):
    """What a span reports of a query, from one pass over its text."""

    text: str  # literal-free (`sanitize`)
    operation: str | None  # leading keyword, upper-case; for `WITH ...` the main statement's
    collection: str | None  # the single table a simple statement works on


def describe(query: str, *, double_quoted_strings: bool = False) -> Statement:
    """Sanitize `query` once and read its operation and table from the literal-free text."""
    text = sanitize(query, 4096, double_quoted_strings=double_quoted_strings)
    head = text.lstrip("( ")
    operation = _operation(head)
    return Statement(text[:2048], operation, _collection(head, operation))


def _operation(text: str) -> str | None:
    first = _KEYWORD.match(text)
    if first is None:
        return None
    keyword = first.group().upper()
    if keyword != "WITH":
        return keyword
    depth = 0
    for token in re.finditer(r"[()]|[A-Za-z]+", text):
        value = token.group()
        if value == "(":
            depth += 1
        elif value == ")":
            depth -= 1
        elif depth == 0 and value.upper() in _MAIN_STATEMENTS:
            return value.upper()
    return keyword


_IDENT = r"((?:[A-Za-z_][\w$]*|\"[^\"]+\"|`[^`]+`)(?:\.(?:[A-Za-z_][\w$]*|\"[^\"]+\"|`[^`]+`))*)"
_TABLE_PATTERNS = {
    "SELECT": re.compile(r"\bFROM\s+" + _IDENT + r"(?P<rest>.*)", re.IGNORECASE | re.DOTALL),
    "DELETE": re.compile(r"^DELETE\s+FROM\s+(?:ONLY\s+)?" + _IDENT + r"(?P<rest>.*)", re.IGNORECASE),
    "INSERT": re.compile(r"^INSERT\s+(?:IGNORE\s+)?INTO\s+" + _IDENT, re.IGNORECASE),
    "REPLACE": re.compile(r"^REPLACE\s+INTO\s+" + _IDENT, re.IGNORECASE),
    "UPDATE": re.compile(r"^UPDATE\s+(?:ONLY\s+)?" + _IDENT + r"(?P<rest>.*)", re.IGNORECASE),
    "TRUNCATE": re.compile(r"^TRUNCATE\s+(?:TABLE\s+)?" + _IDENT, re.IGNORECASE),
    "COPY": re.compile(r"^COPY\s+" + _IDENT, re.IGNORECASE),
    "CREATE": re.compile(
        r"^CREATE\s+(?:TEMP\w*\s+)?TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?" + _IDENT, re.IGNORECASE
    ),
    "DROP": re.compile(r"^DROP\s+TABLE\s+(?:IF\s+EXISTS\s+)?" + _IDENT, re.IGNORECASE),
    "ALTER": re.compile(r"^ALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?:ONLY\s+)?" + _IDENT, re.IGNORECASE),
}
# A second table in the statement makes "the" collection ambiguous: report none then.
_MULTI_TABLE = re.compile(r"\bJOIN\b|\bFROM\s*\(|^\s*,|\bUSING\b", re.IGNORECASE)


def _collection(text: str, op: str | None) -> str | None:
    if op is None or op not in _TABLE_PATTERNS or text.upper().startswith("WITH"):
        return None
    match = _TABLE_PATTERNS[op].search(text)
    if match is None:
        return None
    rest = match.groupdict().get("rest") or ""
    if op == "SELECT" and re.search(r"\(\s*SELECT\b", text, re.IGNORECASE):
        return None
    if _MULTI_TABLE.search(rest):
        return None
    return match.group(1)
