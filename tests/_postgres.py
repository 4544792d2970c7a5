"""A throw-away PostgreSQL server for tests: ``postgres_server`` (per session), ``postgres_url``.

Use it from a ``conftest.py``::

    from tests._postgres import postgres_server, postgres_url  # noqa: F401 (fixtures)

``postgres_url`` yields the URL of a fresh, empty database on a server that this test session
started (``initdb`` in a temporary folder, ``pg_ctl start``, a Unix socket only, no TCP port, so
pytest-xdist workers each get their own server without clashing); the server stops and its folder
is deleted at the end of the session. Start-up takes about a second: no fsync, no TCP.

The binaries are looked up in ``$TORCHOPT_PG_BIN``, then ``/usr/lib/postgresql/<version>/bin``
(Debian's ``postgresql`` package, newest version first), then ``PATH``. ``initdb`` refuses to
run as root: as root, the server runs as the ``postgres`` system user (``runuser``). Where the
server cannot start (no binaries, no driver, no ``postgres`` user), the tests using these fixtures
skip, saying why.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SUPERUSER = "postgres"
"""The database superuser ``initdb`` creates (trust authentication over the Unix socket)."""


def find_binaries() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``, or ``None`` if there is none."""
    candidates = [os.environ.get("TORCHOPT_PG_BIN", "")]
    candidates += sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda path: [int(p) for p in Path(path).parent.name.split(".") if p.isdigit()],
        reverse=True,
    )
    on_path = shutil.which("initdb")
    candidates.append(str(Path(on_path).parent) if on_path else "")
    for folder in candidates:
        if folder and all((Path(folder) / name).is_file() for name in ("initdb", "pg_ctl")):
            return Path(folder)
    return None


@dataclass
class PostgresServer:
    """A running server: its socket folder, and a counter naming fresh databases."""

    bin_dir: Path
    root: Path
    run_as: str | None
    _names: Iterator[int] = field(default_factory=itertools.count)

    @property
    def socket_dir(self) -> Path:
        """Folder of the server's Unix socket (the ``host`` of its URLs)."""
        return self.root / "socket"

    def url(self, database: str) -> str:
        """SQLAlchemy URL of ``database`` on this server (psycopg2 over the Unix socket)."""
        return f"postgresql+psycopg2://{SUPERUSER}@/{database}?host={self.socket_dir}"

    def create_database(self) -> str:
        """Create an empty database with a new name; return its URL."""
        import psycopg2

        name = f"test_{os.getpid()}_{next(self._names)}"
        connection = psycopg2.connect(dbname="postgres", user=SUPERUSER, host=str(self.socket_dir))
        try:
            connection.autocommit = True  # CREATE DATABASE cannot run inside a transaction
            with connection.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            connection.close()
        return self.url(name)

    def _run(self, *command: str) -> None:
        prefix = ["runuser", "-u", self.run_as, "--"] if self.run_as else []
        result = subprocess.run(
            [*prefix, *command], capture_output=True, text=True, timeout=60, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}{result.stderr}"
            )

    def start(self) -> None:
        """``initdb`` then ``pg_ctl start``; raises ``RuntimeError`` with the tools' output."""
        data = self.root / "data"
        self.socket_dir.mkdir()
        if self.run_as:
            user = pwd.getpwnam(self.run_as)
            for path in (self.root, self.socket_dir):
                os.chown(path, user.pw_uid, user.pw_gid)
        self._run(
            str(self.bin_dir / "initdb"),
            "--no-sync",
            "--auth=trust",
            f"--username={SUPERUSER}",
            "--encoding=UTF8",
            f"--pgdata={data}",
        )
        # No TCP (listen_addresses=''), no fsync: a test server, private to this session.
        options = (
            f"-c listen_addresses='' -k {self.socket_dir} -c fsync=off -c full_page_writes=off"
        )
        self._run(
            str(self.bin_dir / "pg_ctl"),
            "start",
            "--wait",
            f"--pgdata={data}",
            f"--log={self.root / 'server.log'}",
            f"--options={options}",
        )

    def stop(self) -> None:
        """Stop the server (fast: no checkpoint needed, the data is thrown away)."""
        data = self.root / "data"
        self._run(str(self.bin_dir / "pg_ctl"), "stop", "--mode=immediate", f"--pgdata={data}")


def _skip_reason() -> str | None:
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        return "PostgreSQL tests need psycopg2: pip install torchopt-edu[postgres]"
    if find_binaries() is None:
        return (
            "PostgreSQL tests need the server's binaries (initdb, pg_ctl): apt-get install "
            "postgresql, or set TORCHOPT_PG_BIN to their folder"
        )
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SUPERUSER)
        except KeyError:
            return "initdb refuses to run as root, and there is no 'postgres' user to run it as"
        if shutil.which("runuser") is None:
            return "initdb refuses to run as root, and runuser is missing to run it as 'postgres'"
    return None


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server private to this test session (skips the test if none can start)."""
    reason = _skip_reason()
    if reason is not None:
        pytest.skip(reason)
    bin_dir = find_binaries()
    assert bin_dir is not None
    # /tmp rather than pytest's tmp_path: the server's user must reach the folder, and a Unix
    # socket's path must stay under about 100 characters.
    root = Path(tempfile.mkdtemp(prefix="torchopt-pg-", dir="/tmp"))
    server = PostgresServer(bin_dir, root, SUPERUSER if os.geteuid() == 0 else None)
    try:
        try:
            server.start()
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as error:
            pytest.skip(f"the PostgreSQL test server did not start: {error}")
        yield server
        server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """The URL of a fresh, empty database on the session's PostgreSQL server."""
    return postgres_server.create_database()
