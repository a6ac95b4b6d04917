"""Real servers for tests (and benchmarks): started on loopback, thrown away afterwards.

``postgres_url`` is a session-scoped fixture: a PostgreSQL server of its own (data dir under
/tmp, a free port on 127.0.0.1, fsync off), run as the ``postgres`` OS user because the
server refuses root. Set ``SHIPYARD_TEST_POSTGRES_URL`` to use an existing server instead.
Nothing is skipped silently: if a server cannot be provided the fixture fails and says why.

``ensure_apt_package(binary, package)`` installs a Debian package when its binary is missing
(``apt-get update`` once per process), for tests that need redis-server, chromium, ...
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

_apt_lock = threading.Lock()
_apt_updated = False


class ServiceUnavailable(RuntimeError):
    """A real service the tests need could not be provided (the message says why)."""


def _run(cmd: list[str], *, timeout: float = 600, user: str | None = None, **kw) -> subprocess.CompletedProcess:
    if user is not None and os.geteuid() == 0:
        kw.update(user=user, group=pwd.getpwnam(user).pw_gid, extra_groups=[])
        kw.setdefault("env", {**os.environ, "HOME": pwd.getpwnam(user).pw_dir or "/tmp"})
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True, **kw)
    except subprocess.CalledProcessError as exc:
        raise ServiceUnavailable(
            f"{' '.join(cmd)!r} exited {exc.returncode}:\n{(exc.stdout or '')[-2000:]}{(exc.stderr or '')[-2000:]}"
        ) from None
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ServiceUnavailable(f"{' '.join(cmd)!r} failed: {exc}") from None


def apt_install(*packages: str) -> None:
    """``apt-get install -y`` (after one ``apt-get update`` per process). Needs root."""
    global _apt_updated
    if shutil.which("apt-get") is None:
        raise ServiceUnavailable(f"cannot install {', '.join(packages)}: apt-get is not available")
    if os.geteuid() != 0:
        raise ServiceUnavailable(f"cannot install {', '.join(packages)}: apt-get needs root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with _apt_lock:
        if not _apt_updated:
            _run(["apt-get", "update"], env=env)
            _apt_updated = True
        _run(["apt-get", "install", "-y", "--no-install-recommends", *packages], env=env)


def ensure_apt_package(binary: str, package: str) -> str:
    """The path of ``binary`` (a name on PATH, or an absolute path / glob); installs the
    Debian ``package`` first when it is missing. Raises ServiceUnavailable if it cannot."""

    def find() -> str | None:
        if os.sep in binary:
            hits = sorted(glob.glob(binary))
            return hits[-1] if hits else None
        return shutil.which(binary)

    path = find()
    if path is None:
        apt_install(package)
        path = find()
        if path is None:
            raise ServiceUnavailable(f"installed Debian package {package!r} but {binary!r} is still missing")
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- PostgreSQL -------------------------------------------------------------------------

PG_USER = "postgres"
PG_PASSWORD = "shipyard-test"


def postgres_bindir() -> Path:
    """The directory with initdb/pg_ctl/postgres (newest version found), installing the
    Debian ``postgresql`` package if there is none."""
    initdb = ensure_apt_package("/usr/lib/postgresql/*/bin/initdb", "postgresql")
    return Path(initdb).parent


def _ensure_os_user(name: str) -> None:
    try:
        pwd.getpwnam(name)
    except KeyError:
        if os.geteuid() != 0:
            raise ServiceUnavailable(f"OS user {name!r} is missing and only root can create it") from None
        _run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name])


class PostgresServer:
    """A throwaway PostgreSQL cluster: ``start()`` → ``url``; ``stop()`` removes everything."""

    def __init__(self, *, fsync: bool = False, settings: dict[str, str] | None = None) -> None:
        self.fsync = fsync
        self.settings = settings or {}
        self.datadir: Path | None = None
        self.port: int | None = None
        self.url: str | None = None
        self._user = PG_USER if os.geteuid() == 0 else None

    def _pg(self, tool: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return _run([str(self.bindir / tool), *args], user=self._user, timeout=timeout, cwd="/tmp")

    def start(self) -> "PostgresServer":
        self.bindir = postgres_bindir()
        if self._user:
            _ensure_os_user(self._user)
        self.datadir = Path(tempfile.mkdtemp(prefix="shipyard-pg-"))
        atexit.register(self.stop)
        if self._user:
            pw = pwd.getpwnam(self._user)
            os.chown(self.datadir, pw.pw_uid, pw.pw_gid)
        pwfile = self.datadir / "pwfile"
        pwfile.write_text(PG_PASSWORD + "\n")
        if self._user:
            os.chown(pwfile, pwd.getpwnam(self._user).pw_uid, -1)
        data = self.datadir / "data"
        self._pg("initdb", "-D", str(data), "-U", PG_USER, "-E", "UTF8", "--no-locale",
                 "--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}", "--no-sync")
        settings = {
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.datadir),
            "fsync": "on" if self.fsync else "off",
            "synchronous_commit": "on" if self.fsync else "off",
            "full_page_writes": "on" if self.fsync else "off",
            "max_connections": "100",
            **self.settings,
        }
        with open(data / "postgresql.conf", "a") as conf:
            conf.write("\n# shipyard test server\n")
            for k, v in settings.items():
                conf.write(f"{k} = '{v}'\n")
        last: Exception | None = None
        for _ in range(5):  # the free port can be taken between choosing and binding it
            self.port = free_port()
            try:
                self._pg("pg_ctl", "-D", str(data), "-l", str(self.datadir / "server.log"), "-w", "-t", "60",
                         "-o", f"-p {self.port}", "start", timeout=90)
                break
            except ServiceUnavailable as exc:
                last = exc
        else:
            log = (self.datadir / "server.log")
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise ServiceUnavailable(f"PostgreSQL did not start: {last}\n{tail}")
        self._pg("createdb", "-h", str(self.datadir), "-p", str(self.port), "-U", PG_USER, "shipyard")
        self.url = f"postgresql://{PG_USER}:{PG_PASSWORD}@127.0.0.1:{self.port}/shipyard"
        return self

    def stop(self) -> None:
        if self.datadir is None:
            return
        datadir, self.datadir = self.datadir, None
        if (datadir / "data" / "postmaster.pid").exists():
            try:
                self._pg("pg_ctl", "-D", str(datadir / "data"), "-m", "immediate", "-w", "stop", timeout=60)
            except ServiceUnavailable:
                pass
        shutil.rmtree(datadir, ignore_errors=True)

    def __enter__(self) -> "PostgresServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def new_postgres_database(url: str, prefix: str = "t") -> str:
    """Create a fresh, uniquely named database on the server of ``url``; returns its URL."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


def drop_postgres_database(url: str) -> None:
    import psycopg

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    admin = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of a real PostgreSQL database for this test session."""
    external = os.environ.get("SHIPYARD_TEST_POSTGRES_URL")
    if external:
        yield external
        return
    server = PostgresServer()
    try:
        server.start()
    except ServiceUnavailable as exc:
        server.stop()
        pytest.fail(f"a PostgreSQL server for the tests could not be provided: {exc}", pytrace=False)
    assert server.url is not None
    try:
        yield server.url
    finally:
        server.stop()


# ---- Redis --------------------------------------------------------------------------------
# (access/shared state) ``redis_url``: a session-scoped redis-server from Debian's package on a
# free loopback port with a throwaway dir, no persistence. Tests that stop and restart Redis
# start their own ``RedisServer`` (``stop()`` / ``start()`` keep the port). Set
# ``SHIPYARD_TEST_REDIS_URL`` to use an existing server instead.

class RedisServer:
    """A throwaway redis-server: ``start()`` → ``url``; ``stop()`` ends it (``start()`` again
    reuses the port); ``close()`` also removes its directory."""

    def __init__(self) -> None:
        self.port: int | None = None
        self.dir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.url: str | None = None

    def start(self, timeout: float = 20.0) -> "RedisServer":
        import time

        binary = ensure_apt_package("redis-server", "redis-server")
        if self.dir is None:
            self.dir = Path(tempfile.mkdtemp(prefix="shipyard-redis-"))
            atexit.register(self.close)
        last = ""
        for _ in range(5):  # the free port can be taken between choosing and binding it
            port = self.port or free_port()
            self.proc = subprocess.Popen(
                [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(self.dir), "--save", "",
                 "--appendonly", "no", "--daemonize", "no", "--logfile", str(self.dir / "redis.log")],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                if _redis_ping(port):
                    self.port = port
                    self.url = f"redis://127.0.0.1:{port}/0"
                    return self
                time.sleep(0.02)
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(5)
            log = self.dir / "redis.log"
            last = log.read_text()[-2000:] if log.exists() else ""
            if self.port is not None:
                time.sleep(0.2)  # a restart on a fixed port: the old socket may linger briefly
        raise ServiceUnavailable(f"redis-server did not start:\n{last}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def close(self) -> None:
        self.stop()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a real Redis for this test session (use a unique ``key_prefix`` per test)."""
    external = os.environ.get("SHIPYARD_TEST_REDIS_URL")
    if external:
        yield external
        return
    server = RedisServer()
    try:
        server.start()
    except ServiceUnavailable as exc:
        server.close()
        pytest.fail(f"a Redis server for the tests could not be provided: {exc}", pytrace=False)
    assert server.url is not None
    try:
        yield server.url
    finally:
        server.close()
