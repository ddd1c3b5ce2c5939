"""Parser for the test-vector text of RFC 9497 Appendix A and RFC 9807 Appendix C.

The RFC text is kept verbatim in tests/vectors/. A section starts with a header
at column 0 ("A.1.1.1.  Test Vector 1, Batch Size 1"); fields are indented
lines "name = hex" (RFC 9497) or "name: value" (RFC 9807); long hex values
continue on following indented lines without a separator.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

VECTORS_DIR = Path(__file__).resolve().parent.parent / "vectors"

_HEADER = re.compile(r"^([A-Z](?:\.\d+)+)\.\s+(.+)$")
_FIELD = re.compile(r"^   (\w[\w ]*?)(?: = |: )(.*)$")
_CONTINUATION = re.compile(r"^   ([0-9a-f,]+)$")


@dataclass
class Section:
    """One numbered section and the fields listed directly under it."""

    number: str
    title: str
    fields: dict[str, str] = field(default_factory=dict)

    def hex(self, name: str) -> bytes:
        """A field's value decoded from hex."""
        return bytes.fromhex(self.fields[name])


def parse(path: Path) -> list[Section]:
    """All sections of an RFC appendix file, in order."""
    sections: list[Section] = []
    current: Section | None = None
    last_field: str | None = None
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        header = _HEADER.match(line)
        if header:
            current = Section(header.group(1), header.group(2).strip())
            sections.append(current)
            last_field = None
            continue
        if current is None:
            raise ValueError(f"field outside a section: {line!r}")
        continuation = _CONTINUATION.match(line)
        if continuation and last_field is not None and _FIELD.match(line) is None:
            current.fields[last_field] += continuation.group(1)
            continue
        match = _FIELD.match(line)
        if match is None:
            raise ValueError(f"unparsed line: {line!r}")
        last_field = match.group(1)
        if last_field in current.fields:
            raise ValueError(f"duplicate field {last_field} in {current.number}")
        current.fields[last_field] = match.group(2).strip()
    return sections


def children(sections: list[Section], parent: str) -> list[Section]:
    """Direct child sections of ``parent`` (e.g. "A.1.1" -> A.1.1.1, A.1.1.2)."""
    depth = parent.count(".") + 1
    return [
        s for s in sections if s.number.startswith(parent + ".") and s.number.count(".") == depth
    ]


def find(sections: list[Section], number: str) -> Section:
    """The section with this number."""
    for section in sections:
        if section.number == number:
            return section
    raise KeyError(number)


@dataclass
class OpaqueVector:
    """An RFC 9807 Appendix C vector: its number, title and its subsections' fields."""

    number: str
    title: str
    configuration: dict[str, str]
    inputs: dict[str, str]
    intermediates: dict[str, str]
    outputs: dict[str, str]

    def input(self, name: str) -> bytes:
        """An input value decoded from hex."""
        return bytes.fromhex(self.inputs[name])


def opaque_vectors(path: Path) -> list[OpaqueVector]:
    """Every vector of RFC 9807 Appendix C (sections C.1.n and C.2.n)."""
    sections = parse(path)
    vectors: list[OpaqueVector] = []
    for top in sections:
        if not re.fullmatch(r"C\.[12]\.\d+", top.number):
            continue
        parts = {child.title: child.fields for child in children(sections, top.number)}
        vectors.append(
            OpaqueVector(
                top.number,
                top.title,
                parts["Configuration"],
                parts["Input Values"],
                parts.get("Intermediate Values", {}),
                parts["Output Values"],
            )
        )
    return vectors
