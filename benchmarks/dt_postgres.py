"""A throw-away PostgreSQL server for one benchmark run, from a carried tarball.

The GPU hosts have no package manager and no network, so the server travels as a tarball of
the PostgreSQL 16.2 build that the PyPI wheel `pgserver` 0.1.4 ships (its `postgres`,
`initdb` and `pg_ctl`, the `share/` files initdb reads, `plpgsql`, the snowball dictionaries
and the libpq initdb links); `postgres` itself needs only glibc and zlib. The tarball holds
`pgserver/pginstall/...` and `pgserver.libs/` (initdb finds libpq through its RPATH
`$ORIGIN/../../../pgserver.libs`). How it is made, on a machine with pip:

    pip download --no-deps --only-binary=:all: --python-version 3.12 \\
        --platform manylinux_2_17_x86_64 pgserver==0.1.4
    unzip -q pgserver-0.1.4-*.whl -d x && cd x && d=pgserver/pginstall && \\
    tar cJf ../postgresql-16.2-pgserver.tar.xz $d/bin/postgres $d/bin/initdb $d/bin/pg_ctl \\
        $d/lib/postgresql/plpgsql.so $d/lib/postgresql/dict_snowball.so \\
        --exclude "$d/share/postgresql/extension/[!p]*" $d/share pgserver.libs/libpq-*

PostgreSQL refuses to run as root; where this process is root (the GPU hosts), initdb and
the server run as the user `nobody` (`subprocess.Popen(user=...)`), with the data folder
theirs. The server listens on 127.0.0.1 only, with `trust` authentication: a study on one
host, gone with the host.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tarfile
import time
from pathlib import Path

DB = "resbench"
USER = "resbench"


class LocalPostgres:
    """`start()` unpacks (if given a tarball), initialises and starts the server; `url` is
    the SQLAlchemy URL of its database; `stop()` shuts it down (fast mode)."""

    def __init__(self, dist: Path, work: Path, *, port: int = 54329) -> None:
        self.dist = dist
        self.work = work
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = work / "postgres.log"
        self.version = ""

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://{USER}@127.0.0.1:{self.port}/{DB}"

    def _root(self) -> Path:
        if self.dist.is_dir():
            return self.dist
        root = self.work / "dist"
        if not (root / "pgserver").is_dir():
            root.mkdir(parents=True, exist_ok=True)
            with tarfile.open(self.dist) as tar:
                tar.extractall(root, filter="tar")
        return root

    def start(self, timeout_s: float = 60.0) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        bin_dir = self._root() / "pgserver" / "pginstall" / "bin"
        data = self.work / "data"
        shutil.rmtree(data, ignore_errors=True)
        data.mkdir()
        user = _server_user()
        if user is not None:  # root: the server runs as `user`, which must reach its files
            for path in (self.work, *self._root().rglob("*")):
                path.chmod(path.stat().st_mode | 0o055 if path.is_dir() else
                           path.stat().st_mode | 0o044)
            for parent in self.work.parents:  # e.g. /tmp; a folder above must be traversable
                if parent.stat().st_mode & 0o001 == 0:
                    raise SystemExit(f"PostgreSQL runs as {user}, who cannot enter {parent}: "
                                     f"give --work a folder under /tmp")
            shutil.chown(data, user)
        self.version = subprocess.run([str(bin_dir / "postgres"), "--version"], check=True,
                                      capture_output=True, text=True).stdout.strip()
        subprocess.run([str(bin_dir / "initdb"), "-D", str(data), "-U", USER, "--auth=trust",
                        "-E", "UTF8", "--no-locale"], check=True, user=user, cwd="/tmp",
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        log = open(self.log_path, "ab")  # noqa: SIM115 - the server keeps it for its life
        self.proc = subprocess.Popen(
            [str(bin_dir / "postgres"), "-D", str(data), "-p", str(self.port), "-k", str(data),
             "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=100"],
            user=user, cwd="/tmp", stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            start_new_session=True)
        self._create_database(timeout_s)

    def _create_database(self, timeout_s: float) -> None:
        import psycopg2  # the SQLAlchemy driver the workers use

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                con = psycopg2.connect(host="127.0.0.1", port=self.port, user=USER,
                                       dbname="postgres")
                break
            except psycopg2.OperationalError:
                if time.monotonic() > deadline or (self.proc and self.proc.poll() is not None):
                    raise SystemExit(f"PostgreSQL did not start; see {self.log_path}") from None
                time.sleep(0.3)
        con.autocommit = True
        with con.cursor() as cur:
            cur.execute(f"CREATE DATABASE {DB} OWNER {USER}")
        con.close()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)  # "fast" shutdown: clients cut, data flushed
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _server_user() -> str | None:
    """None when this process is not root; else the unprivileged user the server runs as."""
    if os.geteuid() != 0:
        return None
    import pwd

    for name in ("postgres", "nobody", "resbench-pg"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    if shutil.which("useradd"):  # an image without either: make a system user for the run
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/bin/false",
                        "resbench-pg"], check=True)
        return "resbench-pg"
    raise SystemExit("running as root, no user `postgres` or `nobody` to run PostgreSQL as, "
                     "and no useradd to make one")
