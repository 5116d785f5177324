"""A throwaway PostgreSQL server for the audit tests: ``initdb`` a cluster in a temporary
folder, start it on a free loopback port, hand out one fresh database per test, and stop
it (``pg_ctl stop -m immediate``) and delete the folder at the end.

PostgreSQL refuses to run as root, so under root the server runs as the ``postgres`` system
user (Debian's package creates it) through ``runuser``. Nothing here touches a server that
was already running on the machine.

When no PostgreSQL binaries are found the tests that need it are skipped, unless
``CONVLENS_REQUIRE_POSTGRES=1`` (set by ``make test``, which installs the server), in which
case they fail: make test must not pass by skipping them.
"""
from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path


def _bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    cands = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return cands[-1] if cands else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    def __init__(self):
        self.initdb, self.pg_ctl = _bin("initdb"), _bin("pg_ctl")
        if not (self.initdb and self.pg_ctl):
            raise FileNotFoundError("PostgreSQL's initdb/pg_ctl were not found (apt-get install postgresql)")
        self.prefix: list[str] = []
        self.base = Path(tempfile.mkdtemp(prefix="convlens-pg-"))
        if os.geteuid() == 0:
            import pwd
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError as e:
                raise FileNotFoundError("running as root and there is no 'postgres' user to run the server") from e
            os.chown(self.base, pw.pw_uid, pw.pw_gid)
            self.prefix = ["runuser", "-u", "postgres", "--"]
        self.data = self.base / "data"
        self.port = _free_port()
        self.user = "convlens"
        env = dict(os.environ, LC_ALL="C", LANG="C")
        subprocess.run(self.prefix + [self.initdb, "-D", str(self.data), "-A", "trust", "-U", self.user,
                                      "-E", "UTF8", "--locale=C", "--no-sync"],
                       check=True, capture_output=True, env=env, timeout=180)
        opts = (f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        subprocess.run(self.prefix + [self.pg_ctl, "-D", str(self.data), "-o", opts, "-l",
                                      str(self.base / "server.log"), "-w", "-t", "120", "start"],
                       check=True, capture_output=True, env=env, timeout=180)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database; returns its SQLAlchemy URL."""
        import sqlalchemy as sa
        name = "t_" + uuid.uuid4().hex[:16]
        eng = sa.create_engine(self.url(), isolation_level="AUTOCOMMIT")
        try:
            with eng.connect() as c:
                c.execute(sa.text(f'CREATE DATABASE "{name}"'))
        finally:
            eng.dispose()
        return self.url(name)

    def log(self) -> str:
        try:
            return (self.base / "server.log").read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        try:
            subprocess.run(self.prefix + [self.pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop"],
                           capture_output=True, timeout=60)
        finally:
            shutil.rmtree(self.base, ignore_errors=True)
