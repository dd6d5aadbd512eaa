"""Crash consistency: writer processes SIGKILLed at random moments while they save checkpoints.

A *writer* is a fresh interpreter (``python -m faults.crash --child``; nothing leaks from the
parent's state) that opens the store through :func:`ckpt_core.open_store` and saves records with
:class:`ckpt_core.CheckpointManager` in an endless loop: small records, multi-MiB records (chunked
on Redis, multipart above the threshold on S3), a JSON record, and a node that flips between small
and multi-MiB, each save overwriting the same few nodes. Every value is derived from
``(node, version)`` (:func:`value_for`), and versions only grow, so the parent can recompute the
exact bytes any load should return.

Before each save the writer appends ``I <node> <version>`` (intent) to a journal and fsyncs it;
after the save returns it appends ``A <node> <version>`` (acknowledged). A SIGKILL cannot undo a
completed ``write(2)``, so after the kill the parent knows, for every node, the last acknowledged
version and the intents that were never acknowledged. It then checks every node:

- it loads as the latest acknowledged value, or as an unacknowledged intent newer than that
  (the save the kill interrupted may or may not have landed);
- it is missing only if no save of it was ever acknowledged;
- anything else is a failure: ``CheckpointCorrupted`` or any other error, bytes that are not the
  exact value of the version they claim (wrong data), an older value (stale), a miss after an
  acknowledged save (lost);
- ``store.list`` shows only the record keys, never a temp file or a Redis chunk.

At the end the debris is inspected and cleaned: local temp files are removed by
:meth:`ckpt_core.FsspecStore.sweep_temp_files`; every Redis chunk not referenced by a manifest must
carry a TTL (it expires); incomplete S3 multipart uploads (invisible to readers) are aborted, as a
bucket lifecycle rule would. The parent then overwrites every node once more and reads it back.

The next writer is started (and imports ckpt, s3fs, redis) while the current one runs, and is
released only after the current one is killed and checked; one writer writes at a time.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

MiB = 1 << 20
NAMESPACE = "crash"
CORRELATION = "crash-job"
REPO_ROOT = Path(__file__).resolve().parent.parent

#: Record sizes per node, picked by ``version % len(sizes)``. "flip" alternates between a plain
#: value and a chunked one (Redis) on every overwrite; "huge" crosses the S3 multipart threshold.
NODE_SIZES: dict[str, tuple[int, ...]] = {
    "tiny": (1, 17, 100),
    "small": (900, 4096, 60_000),
    "medium": (300_000, 700_000),
    "big": (2 * MiB, 3 * MiB + 5),
    "huge": (7 * MiB + 3,),
    "flip": (50, 3 * MiB + 1),
}
#: A node whose value is a dict (the ``json`` codec), not bytes.
JSON_NODE = "doc"
NODES: tuple[str, ...] = (*NODE_SIZES, JSON_NODE)
#: Versions of writer ``n`` are ``n * VERSION_STRIDE + i``: they only grow across writers.
VERSION_STRIDE = 1_000_000
BLOCK = 64 << 10


def value_for(node: str, version: int) -> Any:
    """The exact value written as ``version`` of ``node`` (same bytes in every process)."""
    if node == JSON_NODE:
        rng = random.Random(f"{node}/{version}")
        return {
            "node": node,
            "version": version,
            "items": [rng.randrange(1 << 30) for _ in range(50)],
        }
    sizes = NODE_SIZES[node]
    size = sizes[version % len(sizes)]
    head = f"{node}/{version}/".encode()
    # A random 64 KiB block of this version, repeated: cheap to make (the writer spends its time
    # saving, where the kills should land), and a record mixing two versions differs from both.
    block = random.Random(f"{node}/{version}").randbytes(min(size, BLOCK))
    return head + (block * (size // BLOCK + 1))[:size]


def version_of(node: str, value: Any) -> int | None:
    """The version a loaded value claims to be, or ``None`` if it claims nothing readable."""
    try:
        if node == JSON_NODE:
            return int(value["version"]) if isinstance(value, dict) else None
        if not isinstance(value, bytes):
            return None
        name, version, _rest = value.split(b"/", 2)
        return int(version) if name == node.encode() else None
    except (ValueError, KeyError, TypeError):
        return None


# -- backends ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Backend:
    """How a writer opens the store: ``open_store(url, **options)``.

    ``options`` may hold credentials; they reach the writer through its stdin, never its argv.
    """

    name: str
    url: str
    options: dict[str, Any] = field(default_factory=dict)

    def open(self) -> Any:
        import ckpt_core

        return ckpt_core.open_store(self.url, **self.options)


def local_backend(root: str | os.PathLike[str]) -> Backend:
    return Backend("local", str(root))


def redis_backend(url: str, chunk_size: int = 256 << 10) -> Backend:
    """A fresh key prefix; a small ``chunk_size`` so every multi-MiB record is chunked."""
    prefix = f"ckpt-faults-{uuid.uuid4().hex[:12]}"
    return Backend("redis", url, {"prefix": prefix, "chunk_size": chunk_size})


def s3_backend(bucket: str, storage_options: dict[str, Any]) -> Backend:
    """A fresh prefix in ``bucket``; records above 6 MiB ("huge") use multipart upload."""
    options = {**storage_options, "multipart_threshold": 6 * MiB}
    return Backend("s3", f"s3://{bucket}/faults-{uuid.uuid4().hex[:12]}", options)


# -- the writer (child process) ------------------------------------------------------------------


def _journal(fd: int, line: str, *, sync: bool) -> None:
    os.write(fd, line.encode())  # one small O_APPEND write: whole or absent after a kill
    if sync:
        os.fsync(fd)


def child_main() -> None:
    """Writer: read the config line, open the store, say ready, wait for go, save forever."""
    config = json.loads(sys.stdin.readline())
    import ckpt_core as ckpt

    backend = Backend(**config["backend"])
    mgr = ckpt.CheckpointManager(backend.open(), namespace=NAMESPACE)
    index = int(config["index"])
    ctx = ckpt.RunContext(run_id=f"writer-{index}", correlation_id=CORRELATION)
    rng = random.Random(config["seed"])
    fd = os.open(config["journal"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    if sys.stdin.readline().strip() != "go":
        return  # the parent is shutting down
    version = index * VERSION_STRIDE
    while True:
        version += 1
        node = rng.choice(NODES)
        value = value_for(node, version)
        _journal(fd, f"I {node} {version}\n", sync=True)
        mgr.save(ctx, node, value)
        _journal(fd, f"A {node} {version}\n", sync=False)


class _Writer:
    """One writer process, started ahead of time and released with :meth:`go`."""

    def __init__(self, backend: Backend, journal: Path, index: int, seed: int, log: Path) -> None:
        self.index = index
        self._log: IO[bytes] = open(log, "ab")  # noqa: SIM115 - closed in reap()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "faults.crash", "--child"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            cwd=REPO_ROOT,
        )
        config = {
            "backend": {"name": backend.name, "url": backend.url, "options": backend.options},
            "journal": str(journal),
            "index": index,
            "seed": seed,
        }
        assert self.process.stdin is not None
        self.process.stdin.write((json.dumps(config) + "\n").encode())
        self.process.stdin.flush()

    def go(self, timeout: float = 60.0) -> None:
        """Wait until the writer has opened its store, then let it write."""
        assert self.process.stdout is not None and self.process.stdin is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        line = self.process.stdout.readline() if ready else b""
        if line.strip() != b"ready":
            raise RuntimeError(f"writer {self.index} did not start (exit {self.process.poll()})")
        self.process.stdin.write(b"go\n")
        self.process.stdin.flush()

    def kill(self) -> int | None:
        """SIGKILL; returns the exit status it had *before* the kill (``None``: still running)."""
        before = self.process.poll()
        if before is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(30)
        return before

    def reap(self) -> None:
        with contextlib.suppress(Exception):
            self.kill()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self._log.close()


# -- the checker (parent) ------------------------------------------------------------------------


@dataclass
class ScenarioResult:
    """What one crash scenario did and found; ``failures`` empty means it passed."""

    scenario: str
    kills: int = 0
    records_checked: int = 0
    misses: int = 0
    mid_save_kills: int = 0
    idle_kills: int = 0
    landed_in_flight: int = 0
    debris_found: int = 0
    debris_cleaned: int = 0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)

    def detail(self) -> str:
        if not self.scenario.startswith("crash/"):  # server stops, full disks: no writer kills
            return (
                f"{self.scenario}: {self.kills} iterations in {self.seconds:.0f} s; "
                f"{self.records_checked} records loaded and compared byte for byte; "
                f"{len(self.failures)} failures"
            )
        return (
            f"{self.scenario}: {self.kills} kills in {self.seconds:.0f} s; {self.mid_save_kills} "
            f"landed while a save was unacknowledged ({self.landed_in_flight} of those saves "
            f"landed whole), {self.idle_kills} before the writer's first save; "
            f"{self.records_checked} records loaded and compared byte for byte, "
            f"{self.misses} legitimate misses; debris: {self.debris_found} left by kills, "
            f"{self.debris_cleaned} cleaned"
        )


class _Ledger:
    """Reads the journal incrementally: per node, the last acknowledged and unacknowledged
    versions."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.acked: dict[str, int] = {}
        self.unacked: dict[str, set[int]] = {node: set() for node in NODES}
        self._open: tuple[str, int] | None = None

    def catch_up(self) -> tuple[str, int] | None:
        """Read new lines; return the intent the killed writer left unacknowledged, if any."""
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        complete = data[: data.rfind(b"\n") + 1]  # a line cut by the kill is not an intent yet
        self.offset += len(complete)
        for line in complete.decode().splitlines():
            kind, node, text = line.split()
            version = int(text)
            if kind == "I":
                self._open = (node, version)
            else:
                assert self._open == (node, version), f"journal out of order at {line!r}"
                self.acked[node] = version
                self.unacked[node] = {v for v in self.unacked[node] if v > version}
                self._open = None
        left, self._open = self._open, None
        if left is not None:
            self.unacked[left[0]].add(left[1])
        return left

    def allowed(self, node: str) -> set[int]:
        newest = self.acked.get(node)
        if newest is None:
            return set(self.unacked[node])
        return {newest} | {v for v in self.unacked[node] if v > newest}


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and bool(a == b)


class CrashScenario:
    """Kill ``kills`` writers on ``backend`` and check the store after each kill."""

    def __init__(
        self,
        backend: Backend,
        *,
        kills: int,
        seed: int = 20261123,
        max_delay: float = 0.6,
        workdir: str | os.PathLike[str] | None = None,
    ) -> None:
        import ckpt_core as ckpt

        self.ckpt = ckpt
        self.backend = backend
        self.kills = kills
        self.rng = random.Random(seed)
        self.max_delay = max_delay
        self.result = ScenarioResult(f"crash/{backend.name}")
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=f"ckpt-faults-{backend.name}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.journal = self.workdir / "journal.log"
        self.journal.touch()
        self.log = self.workdir / "writers.log"
        self.store = backend.open()
        self.mgr = ckpt.CheckpointManager(self.store, namespace=NAMESPACE)
        self.ctx = ckpt.RunContext(run_id="checker", correlation_id=CORRELATION)
        self.record_keys = {self.mgr.key_for(self.ctx, node) for node in NODES}
        self.ledger = _Ledger(self.journal)
        self._leaks: set[tuple[bytes, bytes]] = set()

    def fail(self, message: str) -> None:
        self.result.failures.append(f"{self.result.scenario}: {message}")

    # -- checks ------------------------------------------------------------------------------
    def check_nodes(self, when: str) -> None:
        for node in NODES:
            allowed = self.ledger.allowed(node)
            try:
                value = self.mgr.load(self.ctx, node)
            except self.ckpt.CheckpointNotFound:
                if node in self.ledger.acked:
                    self.fail(
                        f"{when}: {node!r} is missing, but version {self.ledger.acked[node]} "
                        "was acknowledged (lost)"
                    )
                else:
                    self.result.misses += 1
                continue
            except Exception as exc:
                self.fail(f"{when}: loading {node!r} raised {type(exc).__name__}: {exc}")
                continue
            version = version_of(node, value)
            if version is None or not _same(value, value_for(node, version)):
                self.fail(f"{when}: {node!r} loaded data that no writer wrote (wrong data)")
            elif version not in allowed:
                self.fail(
                    f"{when}: {node!r} loaded version {version}, expected one of "
                    f"{sorted(allowed)} (stale)"
                )
            else:
                self.result.records_checked += 1

    def check_listing(self, when: str) -> None:
        try:
            listed = {info.key for info in self.store.list("")}
        except Exception as exc:
            self.fail(f"{when}: list raised {type(exc).__name__}: {exc}")
            return
        strays = sorted(listed - self.record_keys)
        if strays:
            self.fail(f"{when}: list shows keys that are not records: {strays[:5]}")

    def count_debris(self) -> int:
        """Leftovers of killed writes (never records); inspected per backend."""
        if self.backend.name == "local":
            return len(_temp_files(self.backend.url))
        if self.backend.name == "redis":
            return len(self._redis_orphans())
        if self.backend.name == "s3":
            return len(self._s3_uploads())
        return 0

    def _redis_orphans(self) -> list[bytes]:
        """Chunk keys no manifest refers to; each must expire on its own (a TTL)."""
        client = self.store._client
        ns = self.store._ns
        published: dict[bytes, bytes] = {}
        orphans: list[bytes] = []
        for rkey in client.scan_iter(match=ns + b"*", count=1000):
            if b"\x00" not in rkey:
                continue
            record, gen, _index = rkey.split(b"\x00")
            if record not in published:
                # The record may now be a plain string (a small overwrite): no generation.
                is_hash = client.type(record) == b"hash"
                published[record] = (client.hget(record, "gen") if is_hash else None) or b""
            if gen != published[record]:
                orphans.append(rkey)
                if client.pttl(rkey) < 0 and (record, gen) not in self._leaks:
                    self._leaks.add((record, gen))
                    self.fail(
                        f"leak: chunks of generation {gen.decode()} of {record!r} are referenced "
                        "by no manifest and have no TTL, so they never expire"
                    )
        return orphans

    def _s3_uploads(self) -> list[dict[str, Any]]:
        fs = self.store.fs
        bucket, prefix, _ = fs.split_path(self.backend.url)
        out = fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=prefix)
        uploads: list[dict[str, Any]] = out.get("Uploads") or []
        return uploads

    def clean_debris(self) -> None:
        if self.backend.name == "local":
            left = len(_temp_files(self.backend.url))
            removed = self.store.sweep_temp_files(older_than=0)
            self.result.debris_cleaned = removed
            remaining = _temp_files(self.backend.url)
            if removed != left or remaining:
                self.fail(
                    f"sweep_temp_files removed {removed} of {left} temp files; "
                    f"left: {remaining[:5]}"
                )
        elif self.backend.name == "s3":
            fs = self.store.fs
            bucket = fs.split_path(self.backend.url)[0]
            for upload in self._s3_uploads():
                fs.call_s3(
                    "abort_multipart_upload",
                    Bucket=bucket,
                    Key=upload["Key"],
                    UploadId=upload["UploadId"],
                )
                self.result.debris_cleaned += 1
        elif self.backend.name == "redis":
            # Staged chunks carry a TTL (checked in _redis_orphans) and expire by design; drop
            # them now so the run leaves nothing behind.
            orphans = self._redis_orphans()
            if orphans:
                self.store._client.delete(*orphans)
            self.result.debris_cleaned = len(orphans)

    # -- the run ----------------------------------------------------------------------------
    def run(self) -> ScenarioResult:
        started = time.monotonic()
        writers: list[_Writer] = []
        try:
            self.check_nodes("before the first writer")
            nxt = self._spawn(0)
            writers.append(nxt)
            for i in range(self.kills):
                current = nxt
                current.go()
                if i + 1 < self.kills:
                    nxt = self._spawn(i + 1)  # imports while `current` writes
                    writers.append(nxt)
                time.sleep(self.rng.uniform(0.0, self.max_delay))
                status = current.kill()
                current.reap()
                self.result.kills += 1
                when = f"after kill {i + 1}"
                if status is not None:
                    self.fail(
                        f"{when}: writer exited by itself with status {status}; see {self.log}"
                    )
                    break
                offset = self.ledger.offset
                left = self.ledger.catch_up()
                if self.ledger.offset == offset and left is None:
                    self.result.idle_kills += 1
                if left is not None:
                    self.result.mid_save_kills += 1
                self.check_nodes(when)
                if left is not None and self._landed(*left):
                    self.result.landed_in_flight += 1
                self.check_listing(when)
                self.result.debris_found = max(self.result.debris_found, self.count_debris())
            self.clean_debris()
            self.check_nodes("after cleaning")
            self.check_listing("after cleaning")
            self._overwrite_all()
        except Exception as exc:
            self.fail(f"harness error: {type(exc).__name__}: {exc}")
        finally:
            for writer in writers:
                writer.reap()
            self.result.seconds = time.monotonic() - started
            self._teardown()
        return self.result

    def _spawn(self, index: int) -> _Writer:
        return _Writer(self.backend, self.journal, index + 1, self.rng.randrange(1 << 30), self.log)

    def _landed(self, node: str, version: int) -> bool:
        with contextlib.suppress(Exception):
            return version_of(node, self.mgr.load(self.ctx, node)) == version
        return False

    def _overwrite_all(self) -> None:
        """The store keeps working over the debris: a last version of each node round-trips."""
        version = (self.kills + 2) * VERSION_STRIDE
        for node in NODES:
            value = value_for(node, version)
            self.mgr.save(self.ctx, node, value)
            if not _same(self.mgr.load(self.ctx, node), value):
                self.fail(f"final overwrite of {node!r} did not read back")
            else:
                self.result.records_checked += 1

    def _teardown(self) -> None:
        with contextlib.suppress(Exception):
            if self.backend.name != "local":
                self.store.delete_prefix("")
        with contextlib.suppress(Exception):
            self.store.close()
        if self._own_workdir and not self.result.failures:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _temp_files(root: str) -> list[str]:
    return [
        os.path.join(d, name)
        for d, _dirs, files in os.walk(root)
        for name in files
        if name[0] == "."
    ]


def run_crash_scenario(backend: Backend, kills: int, **options: Any) -> ScenarioResult:
    """Run one crash scenario (see the module docstring); never raises for a found failure."""
    return CrashScenario(backend, kills=kills, **options).run()


@contextlib.contextmanager
def local_store_dir() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="ckpt-faults-local-"))
    try:
        yield directory / "store"
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:] == ["--child"]:
        child_main()
    else:
        sys.exit("usage: python -m faults.crash --child (the writer); run python -m faults")
