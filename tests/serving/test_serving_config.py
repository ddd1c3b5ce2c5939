"""The serving settings every server shares: listen addresses, timeouts, refusal log lines."""

from __future__ import annotations

import os
import socket

import pytest

from bkv.cli.main import main
from bkv.errors import ConfigError
from bkv.serving.guard import describe_request
from bkv.serving.listen import ListenAddress, parse_listen
from bkv.serving.server import listening_socket
from bkv.serving.timeouts import MAX_TIMEOUT_SECONDS, Timeouts, timeouts_from


@pytest.mark.parametrize(
    ("text", "host", "port", "loopback"),
    [
        ("127.0.0.1:0", "127.0.0.1", 0, True),
        ("127.0.0.2:8080", "127.0.0.2", 8080, True),
        ("[::1]:65535", "::1", 65535, True),
        ("0.0.0.0:7801", "0.0.0.0", 7801, False),  # parsed only, never bound
        ("[::]:1", "::", 1, False),
        ("10.1.2.3:443", "10.1.2.3", 443, False),
        ("localhost:80", "localhost", 80, False),  # a name never counts as loopback
        ("hsm-1.internal:7801", "hsm-1.internal", 7801, False),
    ],
)
def test_listen_addresses(text: str, host: str, port: int, loopback: bool) -> None:
    address = parse_listen(text)
    assert address == ListenAddress(host, port)
    assert address.is_loopback is loopback
    assert str(address) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "127.0.0.1",
        ":80",
        "127.0.0.1:",
        "127.0.0.1:65536",
        "127.0.0.1:080",  # not canonical
        "127.0.0.1:-1",
        "127.0.0.1:+80",
        "127.0.0.1: 80",
        "::1:80",  # IPv6 without brackets is ambiguous
        "[::1]80",
        "[127.0.0.1]:80",
        "[fe80::1%eth0]:80",  # a zone names an interface, not an address
        "host name:80",
        "-bad-.example:80",
        "a" * 301 + ":80",
    ],
)
def test_bad_listen_addresses_are_config_errors(text: str) -> None:
    with pytest.raises(ConfigError, match="where"):
        parse_listen(text, "where")


def test_timeouts_from_a_config_table() -> None:
    assert timeouts_from({}, "[x]") == Timeouts()
    both = {"header_timeout_seconds": 2, "body_timeout_seconds": 0.5}
    assert timeouts_from(both, "[x]") == Timeouts(header_seconds=2.0, body_seconds=0.5)


@pytest.mark.parametrize(
    "value", [0, -1, MAX_TIMEOUT_SECONDS + 1, float("nan"), float("inf"), True, "5", None]
)
def test_bad_timeouts_are_refused(value: object) -> None:
    with pytest.raises(ConfigError, match=r"\[x\] body_timeout_seconds"):
        timeouts_from({"body_timeout_seconds": value}, "[x]")
    with pytest.raises(ValueError, match="timeout"):
        Timeouts(header_seconds=value)  # type: ignore[arg-type]


def test_refusal_log_lines_cannot_be_split_by_the_client() -> None:
    # uvicorn decodes %0a in "path" to a line break; the log uses the raw target.
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/x\nbkv hsm: forged line",
        "raw_path": b"/x%0abkv%20hsm:%20forged%20line" + b"a" * 200,
        "client": ("127.0.0.1", 5555),
    }
    line = describe_request(scope)
    assert "\n" not in line
    assert line.startswith("POST /x%0abkv%20hsm:%20forged%20line")
    assert line.endswith(" from 127.0.0.1:5555")
    assert len(line) < 120


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--listen", "127.0.0.1"], "--listen must be HOST:PORT"),
        (["--listen", "::1:8470"], "--listen must be HOST:PORT"),
        (["--header-timeout-seconds", "0"], "timeout must be a number"),
        (["--body-timeout-seconds", "301"], "timeout must be a number"),
    ],
)
def test_witness_serve_refuses_bad_serving_flags(
    args: list[str], match: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Refused before the witness's own config is even read (it does not exist here).
    assert main(["witness", "serve", "--config", "absent.json", *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith("bkv: ConfigError: ")
    assert match in err


def test_an_address_in_use_is_a_config_error_and_leaks_no_socket() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = ListenAddress("127.0.0.1", taken.getsockname()[1])
        before = sorted(os.listdir("/proc/self/fd"))
        with pytest.raises(ConfigError, match=f"cannot listen on {address}"):  # noqa: SIM117
            with listening_socket(address):
                pytest.fail("bound an address in use")
        assert sorted(os.listdir("/proc/self/fd")) == before
