"""Server faults: the store's server dies while records are being saved, and comes back.

One private server per scenario (Redis with append-only persistence fsynced on every write,
``redis-server --appendonly yes --appendfsync always``; or SeaweedFS), started the way the test
suite starts them (:mod:`tests.servers`). Each iteration:

1. a writer thread saves a stream of records through a :class:`ckpt_core.CheckpointManager`, of
   random sizes (on Redis, records above 256 KiB are chunked; on S3, some exceed the multipart
   threshold), each value derived from ``(iteration, index)`` so it can be recomputed exactly;
   it notes each save as *acknowledged* when ``save`` returns;
2. at a random moment the server is killed (Redis: SIGKILL; SeaweedFS: stopped with SIGTERM);
3. the writer's save in flight, or its next one, must fail with ``StoreUnavailable`` within a
   bounded time (any other exception, or a hang, is a failure);
4. the server is restarted on the same port and data directory, and every acknowledged record of
   this iteration and of the previous one (which has now survived two kills) must load byte for
   byte. The save that failed may have landed or not; if it landed it must be whole. A missing
   acknowledged record, different bytes, a corrupted record or any error is a failure;
5. on Redis, every chunk left below the iteration's prefix must carry an expiry (staged by the
   interrupted save), never live forever.

``records checked`` counts the loads compared byte for byte in step 4.
"""

from __future__ import annotations

import contextlib
import itertools
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .crash import ScenarioResult

KiB = 1 << 10
MiB = 1 << 20
NAMESPACE = "server-faults"
#: The failed save must surface within this many seconds of the kill.
ERROR_DEADLINE = 60.0
#: Record sizes (bytes) and their weights.
SIZES: dict[str, tuple[tuple[int, int], ...]] = {
    "redis": ((100, 4), (10 * KiB, 4), (200 * KiB, 2), (600 * KiB, 2), (2 * MiB + 7, 1)),
    "s3": ((100, 4), (10 * KiB, 4), (300 * KiB, 2), (2 * MiB, 1), (7 * MiB + 3, 1)),
}


def value_for(iteration: int, index: int, size: int) -> bytes:
    """The exact bytes saved as record ``index`` of ``iteration``."""
    head = f"{iteration}/{index}/".encode()
    return head + random.Random(f"{iteration}/{index}").randbytes(max(0, size - len(head)))


@dataclass
class _Server:
    """What the scenario needs of a server: how to reach it, kill it and bring it back."""

    url: str
    options: dict[str, Any]
    kill: Callable[[], None]
    restart: Callable[[], None]
    stop: Callable[[], None]
    raw: Any = None  # a redis client, to look behind the store


@contextlib.contextmanager
def _server(kind: str, workdir: Path) -> Iterator[_Server]:
    from tests import servers

    if kind == "redis":
        redis = servers.start_redis(workdir / "redis", **servers.AOF_ALWAYS)
        try:
            yield _Server(
                redis.url,
                {"chunk_size": 256 * KiB},
                redis.kill,
                redis.restart,
                redis.stop,
                redis.client(),
            )
        finally:
            redis.stop()
        return
    s3 = servers.start_seaweed(workdir / "seaweedfs")
    try:
        options = s3.storage_options(multipart_threshold=6 * MiB)
        yield _Server(f"s3://{s3.bucket}/server-faults", options, s3.stop, s3.restart, s3.stop)
    finally:
        s3.stop()


@dataclass
class _Writer:
    """Saves records of one iteration until a save raises; runs in its own thread."""

    mgr: Any
    ctx: Any
    iteration: int
    sizes: list[int]
    acked: dict[int, int] = field(default_factory=dict)  # index -> size
    in_flight: tuple[int, int] | None = None
    error: BaseException | None = None
    failed_at: float = 0.0

    def run(self) -> None:
        # Until a save raises: a fast server must not run out of records before the kill lands.
        for index in itertools.count():
            size = self.sizes[index % len(self.sizes)]
            data = value_for(self.iteration, index, size)
            self.in_flight = (index, size)
            try:
                self.mgr.save(self.ctx, f"r{index}", data)
            except BaseException as exc:
                self.error, self.failed_at = exc, time.monotonic()
                return
            self.acked[index] = size
            self.in_flight = None


class ServerFaultScenario:
    def __init__(self, kind: Literal["redis", "s3"], iterations: int, seed: int) -> None:
        import ckpt_core as ckpt

        self.ckpt = ckpt
        self.kind = kind
        self.iterations = iterations
        self.rng = random.Random(seed)
        self.result = ScenarioResult(f"server-faults/{kind}")
        self.sizes, weights = zip(*SIZES[kind], strict=True)
        self.weights = list(weights)

    def fail(self, message: str) -> None:
        self.result.failures.append(f"{self.result.scenario}: {message}")

    def ctx(self, iteration: int) -> Any:
        return self.ckpt.RunContext(run_id=f"writer-{iteration}", correlation_id=f"i{iteration}")

    def run(self, workdir: Path) -> ScenarioResult:
        started = time.monotonic()
        try:
            with _server(self.kind, workdir) as server:
                mgr = self.ckpt.CheckpointManager(server.url, NAMESPACE, **server.options)
                try:
                    self._iterations(server, mgr)
                finally:
                    mgr.close()
        except Exception as exc:
            self.fail(f"{type(exc).__name__}: {exc}")
        except BaseException as exc:  # tests.servers skips (pytest) when it has no server
            if type(exc).__module__.split(".")[0] != "_pytest":
                raise
            self.fail(f"server unavailable: {getattr(exc, 'msg', exc)}")
        self.result.seconds = time.monotonic() - started
        return self.result

    def _iterations(self, server: _Server, mgr: Any) -> None:
        previous: _Writer | None = None
        for iteration in range(self.iterations):
            sizes = self.rng.choices(self.sizes, self.weights, k=400)
            writer = _Writer(mgr, self.ctx(iteration), iteration, sizes)
            thread = threading.Thread(target=writer.run, name=f"writer-{iteration}", daemon=True)
            thread.start()
            time.sleep(self.rng.uniform(0.2, 1.2))
            mid_save = writer.in_flight is not None
            killed_at = time.monotonic()
            server.kill()
            thread.join(ERROR_DEADLINE)
            self.result.kills += 1
            self.result.mid_save_kills += mid_save
            self.result.idle_kills += not writer.acked
            if thread.is_alive():
                self.fail(
                    f"iteration {iteration}: a save still hangs {ERROR_DEADLINE:.0f} s after "
                    "the kill"
                )
                return
            self._check_error(iteration, writer, killed_at)
            server.restart()
            self._check_records(iteration, writer, mgr)
            if previous is not None:
                self._check_records(previous.iteration, previous, mgr, again=True)
                mgr.cleanup_correlation(f"i{previous.iteration}")
            if server.raw is not None:
                self._check_chunks(iteration, server, mgr)
            previous = writer
            if len(self.result.failures) > 20:
                return

    def _check_error(self, iteration: int, writer: _Writer, killed_at: float) -> None:
        error = writer.error
        if error is None:
            self.fail(f"iteration {iteration}: every save succeeded, none hit the dead server")
        elif type(error) is not self.ckpt.StoreUnavailable:
            self.fail(
                f"iteration {iteration}: the save hitting the dead server raised "
                f"{type(error).__name__}: {error} (wrong error type)"
            )
        elif writer.failed_at - killed_at > ERROR_DEADLINE:
            self.fail(
                f"iteration {iteration}: the failure took {writer.failed_at - killed_at:.0f} s"
            )

    def _check_records(
        self, iteration: int, writer: _Writer, mgr: Any, again: bool = False
    ) -> None:
        ctx = self.ctx(iteration)
        when = f"iteration {iteration}" + (" (after a second kill)" if again else "")
        for index, size in writer.acked.items():
            try:
                loaded = mgr.load(ctx, f"r{index}")
            except self.ckpt.CheckpointNotFound:
                self.fail(f"{when}: acknowledged record r{index} ({size} bytes) is lost")
                continue
            except Exception as exc:
                self.fail(
                    f"{when}: loading acknowledged r{index} raised {type(exc).__name__}: {exc}"
                )
                continue
            self.result.records_checked += 1
            if loaded != value_for(iteration, index, size):
                self.fail(f"{when}: r{index} loaded different bytes (wrong data)")
        if writer.in_flight is None or again:
            return
        index, size = writer.in_flight
        try:
            loaded = mgr.load(ctx, f"r{index}")
        except self.ckpt.CheckpointNotFound:
            self.result.misses += 1
            return
        except Exception as exc:
            self.fail(f"{when}: the interrupted save r{index} left {type(exc).__name__}: {exc}")
            return
        self.result.records_checked += 1
        self.result.landed_in_flight += 1
        writer.acked[index] = size  # it landed: from now on it must stay
        if loaded != value_for(iteration, index, size):
            self.fail(f"{when}: the interrupted save r{index} landed torn (wrong data)")

    def _check_chunks(self, iteration: int, server: _Server, mgr: Any) -> None:
        """Every chunk below the iteration's prefix either belongs to a record or expires."""
        prefix = f"ckpt:{NAMESPACE}/corr/i{iteration}/"
        live = {bytes(k) for k in server.raw.scan_iter(match=prefix.encode() + b"*", count=1000)}
        for key in (k for k in live if b"\x00" in k):
            record, gen, _index = key.split(b"\x00")
            manifest = (
                server.raw.hget(record, "gen") if server.raw.type(record) == b"hash" else None
            )
            if manifest == gen:
                continue
            self.result.debris_found += 1
            if server.raw.pttl(key) < 0:
                self.fail(
                    f"iteration {iteration}: chunk {key!r} is referenced by no record and "
                    "never expires"
                )


def run_server_fault_scenario(
    kind: Literal["redis", "s3"],
    iterations: int,
    workdir: str | Path | None = None,
    *,
    seed: int = 20261123,
) -> ScenarioResult:
    """Run the scenario (see the module docstring) on a private server under ``workdir``;
    never raises for a found failure (it is in ``result.failures``)."""
    own = workdir is None
    root = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="ckpt-srv-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        return ServerFaultScenario(kind, iterations, seed).run(root)
    finally:
        if own:
            shutil.rmtree(root, ignore_errors=True)
