"""Real servers for the team tests, each started by the test and stopped by its PID: a throwaway PostgreSQL cluster
(Debian's `postgresql`, initdb in a temp dir, 127.0.0.1, a free port) and a real `mlflow server` on a SQLite or
PostgreSQL backend store, plain or with basic auth."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

from conftest import cli_env

PASSWORD = "s3cret-Passw0rd!"  # the basic-auth admin's password (planted, then grepped for in the store)
DB_PASSWORD = "db-Passw0rd-42"  # the PostgreSQL role's password (in the backend-store URI only)
BACKENDS = ("sqlite", "postgresql")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def postgres_bin() -> Path | None:
    """The directory holding Debian's initdb/postgres (/usr/lib/postgresql/<major>/bin), newest major first."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]), reverse=True)
    if found:
        return Path(found[0]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def postgres_missing() -> str | None:
    """Why a PostgreSQL-backed test cannot run here, or None when it can."""
    if postgres_bin() is None:
        return "needs PostgreSQL's initdb/postgres (Debian: apt-get install postgresql)"
    try:
        import psycopg  # noqa: F401  # what SQLAlchemy 2.x's postgresql:// loads inside `mlflow server`
    except ImportError:
        return "needs psycopg 3 (pip install -e '.[team]')"
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root, and initdb refuses root: needs the 'postgres' user (Debian's postgresql makes it)"
    return None


class Postgres:
    """A throwaway PostgreSQL cluster: `initdb` into a temp dir, then `postgres` itself as this object's child process
    (no pg_ctl daemon), listening on 127.0.0.1 only, with one password-protected role and database `mlflow`.

    initdb refuses to run as root, so as root the cluster belongs to Debian's `postgres` user (Popen's `user=`) and
    lives in a temp dir that user owns."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="gflops-pg-"))
        self.process: subprocess.Popen[bytes] | None = None
        self.bin = postgres_bin()
        assert self.bin is not None, postgres_missing()
        self.as_user: dict[str, object] = {}
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
            self.as_user = {"user": "postgres", "group": "postgres", "extra_groups": []}

    def uri(self, database: str = "mlflow") -> str:
        """The SQLAlchemy URI of one database; `postgresql://` loads psycopg 3 under SQLAlchemy 2.x."""
        return f"postgresql://mlflow:{DB_PASSWORD}@127.0.0.1:{self.port}/{database}"

    def database(self, name: str) -> str:
        """Create a fresh database `name` (one per store, so each test sees only its own runs); its URI."""
        assert self.process is not None and self.process.poll() is None, "the cluster is not running"
        created = self._createdb(name)
        assert created.returncode == 0, created.stderr
        return self.uri(name)

    def dump(self, uri: str) -> bytes:
        """Everything one database holds, as `pg_dump` writes it (to grep a store for a planted secret)."""
        database = uri.rsplit("/", 1)[1]
        dumped = subprocess.run(
            [str(self.bin / "pg_dump"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "mlflow", database],
            env={**os.environ, "PGPASSWORD": DB_PASSWORD}, capture_output=True, check=True,
        )  # fmt: skip
        return dumped.stdout

    def _createdb(self, name: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "mlflow", name],
            env={**os.environ, "PGPASSWORD": DB_PASSWORD}, capture_output=True, text=True,
        )  # fmt: skip

    def start(self) -> Postgres:
        password_file = self.folder / "pwfile"
        password_file.write_text(DB_PASSWORD + "\n")
        if self.as_user:
            shutil.chown(password_file, "postgres", "postgres")
        data = self.folder / "data"
        subprocess.run(
            [str(self.bin / "initdb"), "-D", str(data), "-U", "mlflow", f"--pwfile={password_file}",
             "--auth=scram-sha-256", "-E", "UTF8", "--no-sync"],
            check=True, capture_output=True, **self.as_user,  # type: ignore[arg-type]
        )  # fmt: skip
        password_file.unlink()
        log = (self.folder / "postgres.log").open("ab")
        self.process = subprocess.Popen(
            [str(self.bin / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(self.port),
             "-k", str(self.folder), "-c", "fsync=off"],
            stdout=log, stderr=log, start_new_session=True, **self.as_user,  # type: ignore[arg-type]
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            created = self._createdb("mlflow")
            if created.returncode == 0:
                return self
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"PostgreSQL did not start: {created.stderr}\n{self.log()[-2000:]}")
            time.sleep(0.3)

    def log(self) -> str:
        path = self.folder / "postgres.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """Fast shutdown (SIGINT to the postmaster, by PID), then the temp dir goes."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


class Server:
    """A real `mlflow server` on 127.0.0.1 (artifacts served by the server), stopped by its PID. `backend_uri` is the
    backend store: SQLite in `folder` when None, else e.g. a `Postgres.database(...)` URI; `auth_uri` likewise for basic
    auth's own database."""

    def __init__(
        self, folder: Path, port: int, auth: bool = False, backend_uri: str | None = None, auth_uri: str | None = None
    ) -> None:
        self.folder, self.port, self.auth = folder, port, auth
        self.backend_uri = backend_uri or f"sqlite:///{folder / 'server.db'}"
        self.auth_uri = auth_uri or f"sqlite:///{folder / 'auth.db'}"  # basic auth's users and permissions
        self.uri = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        """The command line, as docs/team-setup.md gives it (with this test's host, port and paths)."""
        command = [
            sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
            "--backend-store-uri", self.backend_uri,
            "--artifacts-destination", str(self.folder / "artifacts"), "--workers", "1",
        ]  # fmt: skip
        return [*command, "--app-name", "basic-auth"] if self.auth else command

    def start(self) -> Server:
        env = cli_env()
        if self.auth:
            config = self.folder / "auth.ini"
            config.write_text(
                "[mlflow]\ndefault_permission = READ\n"
                f"database_uri = {self.auth_uri}\nadmin_username = admin\n"
                f"admin_password = {PASSWORD}\n"
                "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            )
            env.update(MLFLOW_AUTH_CONFIG_PATH=str(config), MLFLOW_FLASK_SERVER_SECRET_KEY="test-only-key")
        log = (self.folder / "server.log").open("ab")
        self.process = subprocess.Popen(self.command(), env=env, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                if requests.get(f"{self.uri}/health", timeout=1).ok:
                    return self
            except requests.RequestException:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"mlflow server did not start: {(self.folder / 'server.log').read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)  # the server and its uvicorn workers, by PID
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


class SignallingProxy:
    """A TCP proxy on 127.0.0.1 in front of a real server. When the reply to the first request whose bytes hold
    ``marker`` comes back, it sends ``signum`` to process ``pid`` and holds that reply a moment: the server has
    carried out the request, and the signal lands while the client waits for the answer, as a Ctrl-C in the middle
    of that one call would."""

    def __init__(self, upstream_port: int, marker: bytes, signum: int) -> None:
        self.upstream_port, self.marker, self.signum = upstream_port, marker, signum
        self.pid: int | None = None
        self.fired = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.uri = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            marked = threading.Event()  # this connection carried the marked request
            threading.Thread(target=self._pipe, args=(client, upstream, marked, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, marked, False), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, marked: threading.Event, requests_side: bool) -> None:
        try:
            while data := source.recv(65536):
                if requests_side and self.marker in data and not self.fired.is_set():
                    marked.set()
                elif not requests_side and marked.is_set() and self.pid and not self.fired.is_set():
                    self.fired.set()
                    os.kill(self.pid, self.signum)
                    time.sleep(0.5)  # the client handles the signal while it waits for this reply
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the other side closed

    def close(self) -> None:
        self.listener.close()
