"""A private PostgreSQL cluster for the tests: initdb in a temporary directory, started once.

The server binaries come from Debian's ``postgresql`` package (installed by
``make setup``), found in /usr/lib/postgresql/<major>/bin (the newest major).
PostgreSQL refuses to run as root, so as root (CI) the directory is given to
the ``postgres`` system user and initdb / pg_ctl run through ``runuser``.

The cluster listens on 127.0.0.1 at a free port (password authentication)
and in a socket directory inside the temporary directory, with ``fsync=on``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
from psycopg import sql

BIN_GLOB = "/usr/lib/postgresql/*/bin"
START_TIMEOUT_S = 30
COMMAND_TIMEOUT_S = 120
SUPERUSER = "bkv"
PASSWORD = "bkv-test-only-password"  # a throwaway cluster's; tests check it is never echoed
DATABASE = "bkv_test"
SYSTEM_USER = "postgres"


class ClusterUnavailableError(RuntimeError):
    """The cluster cannot be started here (the message says what to do)."""


def find_bindir() -> Path:
    """The newest major version's bin directory holding initdb and pg_ctl."""
    found = [
        Path(d)
        for d in glob.glob(BIN_GLOB)
        if (Path(d) / "initdb").is_file() and (Path(d) / "pg_ctl").is_file()
    ]
    if not found:
        raise ClusterUnavailableError(
            f"PostgreSQL server binaries (initdb, pg_ctl) not found in {BIN_GLOB}: "
            "run `make setup` (it installs the Debian package postgresql)"
        )

    def major(bindir: Path) -> tuple[int, str]:
        name = bindir.parent.name
        return (int(name) if name.isdigit() else -1, name)

    return max(found, key=major)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PostgresCluster:
    """One initdb'd cluster in ``root``; :meth:`start` and :meth:`stop` it."""

    def __init__(self, bindir: Path, root: Path) -> None:
        self.bindir, self.root = bindir, root
        self.data, self.log = root / "data", root / "server.log"
        self.port = _free_port()
        self._as_root = os.geteuid() == 0

    @property
    def url(self) -> str:
        return f"postgresql://{SUPERUSER}:{PASSWORD}@127.0.0.1:{self.port}/{DATABASE}"

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.bindir / program), *args]
        if self._as_root:
            command = ["runuser", "-u", SYSTEM_USER, "--", *command]
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False
        )
        if result.returncode != 0:
            raise ClusterUnavailableError(
                f"{program} failed ({result.returncode}): {result.stderr.strip()[-2000:]}"
                f"{self._log_tail()}"
            )

    def _log_tail(self) -> str:
        try:
            return "\nserver log:\n" + self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def start(self) -> None:
        if self._as_root:
            try:
                user = pwd.getpwnam(SYSTEM_USER)
            except KeyError:
                raise ClusterUnavailableError(
                    f"no {SYSTEM_USER!r} system user to run PostgreSQL as: run `make setup`"
                ) from None
            os.chown(self.root, user.pw_uid, user.pw_gid)
        os.chmod(self.root, 0o700)
        password_file = self.root / "password"
        password_file.write_text(PASSWORD + "\n")
        if self._as_root:
            os.chown(password_file, user.pw_uid, user.pw_gid)
        self._run(
            "initdb",
            "-D", str(self.data),
            "-U", SUPERUSER,
            f"--pwfile={password_file}",
            "--auth-host=scram-sha-256",
            "--auth-local=trust",
            "-E", "UTF8",
            "--locale=C",
            "--no-sync",  # the cluster is thrown away; the server itself runs with fsync=on
        )  # fmt: skip
        password_file.unlink()
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port}"
            f" -c unix_socket_directories={self.root} -c fsync=on"
        )
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options,
            "-w", "-t", str(START_TIMEOUT_S), "start",
        )  # fmt: skip
        self._wait_until_ready()
        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=5) as db:
            db.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))

    @property
    def admin_url(self) -> str:
        return f"postgresql://{SUPERUSER}:{PASSWORD}@127.0.0.1:{self.port}/postgres"

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                with psycopg.connect(self.admin_url, connect_timeout=2):
                    return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise ClusterUnavailableError(
                        f"PostgreSQL did not accept connections in {START_TIMEOUT_S} s: "
                        f"{type(exc).__name__}{self._log_tail()}"
                    ) from None
                time.sleep(0.2)

    def stop(self) -> None:
        if not (self.data / "postmaster.pid").exists():
            return
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop")
        except (ClusterUnavailableError, subprocess.TimeoutExpired):
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")


@contextlib.contextmanager
def running_cluster() -> Iterator[str]:
    """Start a private cluster with an empty database; yield its URL; stop and delete it."""
    bindir = find_bindir()
    # Under /tmp (world-traversable), not pytest's root-only tmp tree: the postgres
    # user must reach the directory.
    root = Path(tempfile.mkdtemp(prefix="bkv-pg-"))
    cluster = PostgresCluster(bindir, root)
    try:
        cluster.start()
        yield cluster.url
    finally:
        try:
            cluster.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)


def unique_schema() -> str:
    """A schema name no other test uses."""
    return f"t_{uuid.uuid4().hex[:20]}"


def drop_schema(url: str, schema: str) -> None:
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as db:
        db.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
