"""A throwaway PostgreSQL server for the test suite, from Debian's binaries.

PostgreSQL refuses to run as root, so under root (as on CI) the cluster is
initialised and started as the ``postgres`` system user (or a user made for
the purpose). Durability is switched off: the data lives for one session.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import psycopg

HINT = "install Debian's `postgresql` package (apt-get install -y postgresql)"


def _bin_dir() -> Path:
    if os.environ.get("PG_BIN"):
        return Path(os.environ["PG_BIN"])
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        if out.returncode == 0 and (Path(out.stdout.strip()) / "initdb").exists():
            return Path(out.stdout.strip())
    raise RuntimeError(f"PostgreSQL server binaries not found; {HINT}")


def _run_as() -> list[str]:
    if os.geteuid() != 0:
        return []
    for user in ("postgres", "tidegate-test"):
        try:
            pwd.getpwnam(user)
            return ["runuser", "-u", user, "--"]
        except KeyError:
            continue
    subprocess.run(["useradd", "--system", "--no-create-home", "tidegate-test"], check=True)
    return ["runuser", "-u", "tidegate-test", "--"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServer:
    """A running server; ``url`` reaches its ``postgres`` database as superuser."""

    def __init__(self) -> None:
        self.bin = _bin_dir()
        self.prefix = _run_as()
        self.base = Path(tempfile.mkdtemp(prefix="tidegate-pg-"))
        self.data = self.base / "data"
        self.sockets = self.base / "sock"
        self.sockets.mkdir()
        if self.prefix:
            user = self.prefix[2]
            shutil.chown(self.base, user)
            shutil.chown(self.sockets, user)
            os.chmod(self.base, 0o755)
        self.host, self.port, self.user = "127.0.0.1", _free_port(), "postgres"
        self.url = f"postgresql://{self.user}@{self.host}:{self.port}/postgres"
        self.log = self.base / "server.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> PgServer:
        subprocess.run(
            [*self.prefix, str(self.bin / "initdb"), "-D", str(self.data), "-U", self.user,
             "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"],
            check=True, capture_output=True,
        )
        with open(self.log, "wb") as log:
            self._proc = subprocess.Popen(
                [*self.prefix, str(self.bin / "postgres"), "-D", str(self.data),
                 "-p", str(self.port), "-c", "listen_addresses=127.0.0.1",
                 "-c", f"unix_socket_directories={self.sockets}", "-c", "fsync=off",
                 "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                 "-c", "max_connections=200"],
                stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                psycopg.connect(self.url, connect_timeout=2).close()
                return self
            except psycopg.OperationalError:
                if self._proc.poll() is not None:
                    break
                time.sleep(0.1)
        tail = self.log.read_text(errors="replace")[-2000:]
        self.stop()
        raise RuntimeError(f"PostgreSQL did not start:\n{tail}")

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'create database "{name}"')
        return f"postgresql://{self.user}@{self.host}:{self.port}/{name}"

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            # Signal the postmaster itself ("fast" shutdown): runuser does not pass SIGINT on.
            try:
                pid = int((self.data / "postmaster.pid").read_text().split()[0])
                os.kill(pid, signal.SIGINT)
            except (OSError, ValueError, IndexError):
                self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> PgServer:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def start_postgres() -> PgServer:
    return PgServer().start()
