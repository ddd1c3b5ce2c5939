"""The host-to-HSM link: the MAC format, the link key file, and the HSM's listen policy."""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

import pytest
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from bkv.errors import (
    ConfigError,
    KeyExistsError,
    KeyNotFoundError,
    KeystoreError,
    UnauthorizedError,
)
from bkv.hsm.config import load_config
from bkv.hsm.http import build_app
from bkv.hsm.node import init_hsm
from bkv.keystore.files import write_key_file
from bkv.keystore.link_key import create_link_key, read_link_key
from bkv.protocol.hsm_link import (
    LINK_MAC_CONTEXT,
    check_link_mac,
    link_mac,
    link_mac_header,
    parse_link_mac,
)
from bkv.serving.listen import ListenAddress
from bkv.serving.timeouts import Timeouts

KEY = bytes(range(32))
BODY = b"\x01\x01 an HsmRequest"


def test_the_mac_is_hmac_sha256_over_the_documented_layout() -> None:
    message = LINK_MAC_CONTEXT + b"\x04POST" + b"\x00\x0b/v1/message" + BODY
    expected = hmac.new(KEY, message, hashlib.sha256).digest()
    assert link_mac(KEY, "POST", b"/v1/message", BODY) == expected
    assert link_mac_header(KEY, "POST", b"/v1/message", BODY) == expected.hex()


def test_every_part_of_the_request_is_covered() -> None:
    mac = link_mac(KEY, "POST", b"/v1/message", BODY)
    check_link_mac(KEY, "POST", b"/v1/message", BODY, mac)
    for key, method, target, body in (
        (bytes(32), "POST", b"/v1/message", BODY),
        (KEY, "GET", b"/v1/message", BODY),
        (KEY, "POST", b"/v1/messages", BODY),
        (KEY, "POST", b"/v1/message?x=1", BODY),
        (KEY, "POST", b"/v1/message", BODY + b"\x00"),
        (KEY, "POST", b"/v1/message", b""),
        # The length prefixes: moving a byte between fields changes the MAC.
        (KEY, "POS", b"T/v1/message", BODY),
        (KEY, "POST", b"/v1/message" + BODY[:1], BODY[1:]),
    ):
        with pytest.raises(UnauthorizedError, match="does not match"):
            check_link_mac(key, method, target, body, mac)


@pytest.mark.parametrize(
    "value",
    [
        None,
        b"",
        b"00" * 31,
        b"00" * 33,
        b"AB" * 32,
        b"zz" * 32,
        b" " + b"0" * 63,
        b"0x" + b"0" * 62,
    ],
)
def test_malformed_mac_headers_are_unauthorized(value: bytes | None) -> None:
    with pytest.raises(UnauthorizedError):
        parse_link_mac(value)


def test_requests_that_cannot_carry_a_mac_are_unauthorized() -> None:
    mac = bytes(32)
    with pytest.raises(UnauthorizedError):
        check_link_mac(KEY, "", b"/", b"", mac)
    with pytest.raises(UnauthorizedError):
        check_link_mac(KEY, "POST", b"/" * 2049, b"", mac)
    with pytest.raises(UnauthorizedError):
        check_link_mac(KEY, "PÖST", b"/", b"", mac)


def test_mac_misuse_is_a_caller_error() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        link_mac(KEY[:31], "POST", b"/", b"")
    with pytest.raises(TypeError):
        link_mac(KEY, "POST", "/", b"")  # type: ignore[arg-type]


# --- the link key file ---------------------------------------------------------------------


def test_link_key_file_round_trip_and_no_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "link.key"
    create_link_key(path)
    key = read_link_key(path)
    assert len(key) == 32
    assert os.stat(path).st_mode & 0o777 == 0o600
    with pytest.raises(KeyExistsError):
        create_link_key(path)
    assert read_link_key(path) == key


def test_link_key_files_others_could_use_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "link.key"
    with pytest.raises(KeyNotFoundError):
        read_link_key(path)
    create_link_key(path)
    for mode in (0o640, 0o604, 0o620):
        path.chmod(mode)
        with pytest.raises(KeystoreError, match="accessible to other users"):
            read_link_key(path)
    path.chmod(0o600)
    link = tmp_path / "via-symlink.key"
    link.symlink_to(path)
    with pytest.raises(KeystoreError, match="not a regular file"):
        read_link_key(link)
    malformed = tmp_path / "short.key"
    malformed.write_bytes(b"00" * 16 + b"\n")
    malformed.chmod(0o600)
    with pytest.raises(KeystoreError, match="64 lowercase hex"):
        read_link_key(malformed)


def test_a_link_key_file_of_another_user_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "link.key"
    write_key_file(path, KEY)
    owner = path.stat().st_uid
    monkeypatch.setattr(os, "getuid", lambda: owner + 1)
    with pytest.raises(KeystoreError, match="not owned by this user"):
        read_link_key(path)


# --- the HSM config: link key, listen policy, timeouts ---------------------------------------


def _config(tmp_path: Path, hsm_lines: str) -> Path:
    path = tmp_path / "hsm.toml"
    path.write_text(
        f'[hsm]\nfleet_id = "f"\nstate_dir = "state"\n{hsm_lines}\n[sealer]\n', encoding="utf-8"
    )
    return path


def test_hsm_config_defaults(tmp_path: Path) -> None:
    config = load_config(_config(tmp_path, ""))
    assert config.listen == ListenAddress("127.0.0.1", 0)
    assert config.link_key_file == tmp_path.resolve() / "link.key"
    assert config.timeouts == Timeouts()


def test_hsm_config_link_key_and_timeouts(tmp_path: Path) -> None:
    lines = (
        'listen = "[::1]:7801"\nlink_key_file = "shared/hsm-link.key"\n'
        "header_timeout_seconds = 3\nbody_timeout_seconds = 4.5\n"
    )
    config = load_config(_config(tmp_path, lines))
    assert config.listen == ListenAddress("::1", 7801)
    assert config.link_key_file == tmp_path.resolve() / "shared" / "hsm-link.key"
    assert config.timeouts == Timeouts(header_seconds=3.0, body_seconds=4.5)


@pytest.mark.parametrize("listen", ["0.0.0.0:7801", "10.0.0.5:7801", "[::]:7801", "hsm:7801"])
def test_a_non_loopback_listen_needs_allow_remote(tmp_path: Path, listen: str) -> None:
    with pytest.raises(ConfigError, match="not a loopback address; set allow_remote"):
        load_config(_config(tmp_path, f'listen = "{listen}"'))
    with pytest.raises(ConfigError, match="not a loopback address"):
        load_config(_config(tmp_path, f'listen = "{listen}"\nallow_remote = false'))
    config = load_config(_config(tmp_path, f'listen = "{listen}"\nallow_remote = true'))
    assert not config.listen.is_loopback


@pytest.mark.parametrize(
    ("lines", "match"),
    [
        ('allow_remote = "yes"', "allow_remote must be true or false"),
        ('link_key_file = "hsm-private/link.key"', "link_key_file must not be inside key_dir"),
        ('key_dir = "k"\nlink_key_file = "k/link.key"', "must not be inside key_dir"),
        ('link_key_file = ""', "link_key_file"),
        ("header_timeout_seconds = 0", "header_timeout_seconds"),
        ('body_timeout_seconds = "10"', "body_timeout_seconds"),
    ],
)
def test_bad_link_and_serving_settings_are_config_errors(
    tmp_path: Path, lines: str, match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(_config(tmp_path, lines))


def test_the_link_key_is_in_no_repr_of_the_hsm_app(tmp_path: Path) -> None:
    # Starlette's Middleware repr lists its options: an error report or a debug
    # print of the app's middleware must not carry the key.
    with init_hsm(load_config(_config(tmp_path, ""))) as node:
        web = build_app(node, KEY, log=print)
        with TestClient(web) as http:  # builds the middleware stack
            assert http.get("/v1/public-keys").status_code == 401
        shown = repr(web.user_middleware) + repr(web.middleware_stack) + repr(vars(web))
    assert KEY.hex() not in shown
    assert repr(KEY)[2:-1] not in shown


def test_no_websocket_gets_past_the_link_authentication(tmp_path: Path) -> None:
    # bkv serves no WebSocket (uvicorn refuses upgrades); should the app ever
    # run elsewhere, a connection that cannot carry the MAC still gets nothing.
    with (
        init_hsm(load_config(_config(tmp_path, ""))) as node,
        TestClient(build_app(node, KEY, log=print)) as http,
        pytest.raises(WebSocketDisconnect) as closed,
        http.websocket_connect("/v1/message"),
    ):
        pytest.fail("a WebSocket was accepted")
    assert closed.value.code == 1008
