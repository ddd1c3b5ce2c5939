"""Who is in a fleet: 2f+1 members, each in its own datacenter, fixed when the fleet is made."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

MAX_MEMBER_NAME: Final = 32
"""Bytes in a member or datacenter name (UTF-8)."""

FLEET_SIZES: Final = (3, 5)
"""Members a fleet may have: 2f+1 for f = 1 or 2."""


def _check_name(name: str, what: str) -> None:
    if not isinstance(name, str):
        raise TypeError(f"a {what} is a string")
    if not 0 < len(name.encode("utf-8")) <= MAX_MEMBER_NAME or not name.isprintable():
        raise ValueError(f"a {what} is 1..{MAX_MEMBER_NAME} printable UTF-8 bytes")


@dataclass(frozen=True, slots=True)
class Member:
    """One HSM of the fleet and the datacenter it runs in."""

    name: str
    datacenter: str

    def __post_init__(self) -> None:
        _check_name(self.name, "member name")
        _check_name(self.datacenter, "datacenter name")


@dataclass(frozen=True, slots=True)
class Membership:
    """The fleet's members (ordered as created) and the fleet id every message names."""

    fleet_id: str
    members: tuple[Member, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.fleet_id, str) or not 0 < len(self.fleet_id.encode("utf-8")) <= 64:
            raise ValueError("a fleet id is 1..64 UTF-8 bytes")
        if len(self.members) not in FLEET_SIZES:
            raise ValueError(f"a fleet has {' or '.join(map(str, FLEET_SIZES))} members")
        names = [member.name for member in self.members]
        if len(set(names)) != len(names):
            raise ValueError("member names are unique")
        if len({member.datacenter for member in self.members}) != len(self.members):
            raise ValueError("each member is in its own datacenter")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(member.name for member in self.members)

    @property
    def quorum(self) -> int:
        """A strict majority: any two quorums share a member."""
        return len(self.members) // 2 + 1

    def others(self, name: str) -> tuple[str, ...]:
        """Every member but ``name`` (ValueError if ``name`` is not a member)."""
        if name not in self.names:
            raise ValueError(f"{name!r} is not a member")
        return tuple(other for other in self.names if other != name)

    def is_member(self, name: str) -> bool:
        return name in self.names
