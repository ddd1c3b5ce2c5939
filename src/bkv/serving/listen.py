"""Listen addresses: ``HOST:PORT`` or ``[IPv6]:PORT``, parsed the same way by every server.

The port is decimal, 0..65535 (0 picks a free port, printed on the ready line).
An IPv6 address must be in brackets (RFC 3986 §3.2.2): ``::1:80`` is refused
as ambiguous. A host that is not an IP address must be a DNS name (letters,
digits, ``-`` and ``.``); it is resolved when the socket is bound.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Final

from bkv.errors import ConfigError

MAX_LISTEN_TEXT: Final = 300
MAX_PORT: Final = 65535
_DNS_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")
_PORT = re.compile(r"0|[1-9][0-9]{0,4}")


@dataclass(frozen=True)
class ListenAddress:
    """Where a server listens: ``host`` (an IP address or DNS name, no brackets) and ``port``."""

    host: str
    port: int

    @property
    def is_loopback(self) -> bool:
        """Whether ``host`` is a loopback IP address (127.0.0.0/8 or ::1).

        A DNS name never counts, not even ``localhost``: what it resolves to is
        up to the resolver configuration, not to this file.
        """
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def __str__(self) -> str:
        return join_host_port(self.host, self.port)


def join_host_port(host: str, port: int) -> str:
    """``host:port``, with an IPv6 address in brackets (RFC 3986 §3.2.2)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_listen(text: str, where: str = "listen") -> ListenAddress:
    """Parse ``HOST:PORT`` / ``[IPv6]:PORT``; :class:`ConfigError` (naming ``where``) otherwise."""
    if not isinstance(text, str) or not 0 < len(text) <= MAX_LISTEN_TEXT:
        raise ConfigError(f"{where} must be HOST:PORT")
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep or not _is_ipv6(host):
            raise ConfigError(f"{where} must be HOST:PORT with an IPv6 address in brackets")
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host or ":" in host:
            raise ConfigError(f"{where} must be HOST:PORT (an IPv6 address in brackets)")
        if not _is_ipv4(host) and not _DNS_NAME.fullmatch(host):
            raise ConfigError(f"{where}: {host!r} is neither an IP address nor a DNS name")
    if not _PORT.fullmatch(port_text) or int(port_text) > MAX_PORT:
        raise ConfigError(f"{where}: the port must be a decimal number 0..{MAX_PORT}")
    return ListenAddress(host, int(port_text))


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return "%" not in text  # a zone id names an interface of this machine, not an address
