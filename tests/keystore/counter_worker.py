"""A second process for the NV counter and lock tests (run as a script, driven over stdin/stdout).

Modes (one line per command in, one line per answer out):

- ``race COUNTER_PATH DIGEST_BYTE_HEX``: ``read`` -> ``ready VERSION`` (reads the
  counter); ``go`` -> ``won`` or ``lost`` (advances from the value read, to the
  next version with a digest of DIGEST_BYTE repeated); EOF ends.
- ``lock DIRECTORY``: ``locked`` and hold the private directory's lock until EOF,
  or ``refused ERROR_CLASS``.
- ``token-counter PKCS11_JSON LABEL`` (user PIN in ``$BKV_TEST_PIN``): ``opened`` and
  hold the token's counter open until EOF, or ``refused ERROR_CLASS``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from bkv.errors import BkvError, NvCounterConflictError
from bkv.keystore.counter import FileCounter
from bkv.keystore.files import lock_private_directory

MAX_COMMANDS = 1000


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _race(path: Path, digest: bytes) -> None:
    counter = FileCounter(path)
    seen = counter.read()
    for _ in range(MAX_COMMANDS):
        command = sys.stdin.readline().strip()
        if command == "read":
            seen = counter.read()
            _say(f"ready {seen.version}")
        elif command == "go":
            try:
                counter.advance(seen, seen.next(seen.version + 1, digest))
            except NvCounterConflictError:
                _say("lost")
            else:
                _say("won")
        else:
            return


def _hold_until_eof(opened: str) -> None:
    _say(opened)
    sys.stdin.read()


def _lock(directory: Path) -> None:
    try:
        lock = lock_private_directory(directory)
    except BkvError as exc:
        _say(f"refused {type(exc).__name__}")
        return
    with lock:
        _hold_until_eof("locked")


def _token_counter(config_path: Path, label: str) -> None:
    from bkv.keystore import pkcs11  # noqa: PLC0415 - only this mode loads the PKCS#11 library

    config = pkcs11.Pkcs11Config.load(config_path, os.environ["BKV_TEST_PIN"])
    try:
        counter = pkcs11.load_counter(config, label)
    except BkvError as exc:
        _say(f"refused {type(exc).__name__}")
        return
    with counter:
        _hold_until_eof("opened")


def main(argv: list[str]) -> None:
    """Run the mode named by ``argv[1]``."""
    mode = argv[1]
    if mode == "race":
        _race(Path(argv[2]), bytes.fromhex(argv[3]) * 32)
    elif mode == "lock":
        _lock(Path(argv[2]))
    elif mode == "token-counter":
        _token_counter(Path(argv[2]), argv[3])
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv)
