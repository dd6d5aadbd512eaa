"""Concurrency: worker processes hammering the same few nodes with saves, loads and deletes.

``processes`` workers (fresh interpreters, ``python -m faults.concurrency --child``, started the way
:mod:`faults.crash` starts its writers and released together) each run ``ops`` random operations
through :class:`ckpt_core.CheckpointManager` on one correlation and :data:`NODES` (16 nodes shared
by every worker):

- ``save`` (40 %) of a self-checking value (:func:`tests.records.versioned`) from a few bytes up
  to 2 MiB, so Redis records above 256 KiB are chunked and S3 records above 1 MiB are multipart
  uploads (the scenario sets both thresholds on the backend it is given);
- ``load`` (35 %): the value must be one whole record written by some worker *for that node* (its
  header names the writer, a version that encodes the node, and the size; the filler must match
  exactly), or ``CheckpointNotFound``;
- ``delete`` (10 %) of the node's record (the store primitive: the manager deletes by scope);
- ``lookup`` (10 %): ``None`` or the node's key; ``list`` (5 %): only keys of :data:`NODES`.

Any exception other than ``CheckpointNotFound`` on a load is a failure, and so is any value that is
not exactly what a worker wrote for that node (a torn read). Half of the workers use the sync API,
half the async twins. After the workers finish, the parent loads every node once more, checks the
listing, and looks for debris: a local temp file, a Redis chunk no manifest references that has
no TTL, or an S3 multipart upload left open would be a failure (nothing was killed here).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Generator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

from tests.records import check_versioned, versioned

from .crash import Backend, ScenarioResult

MiB = 1 << 20
KiB = 1 << 10
NAMESPACE = "concurrency"
CORRELATION = "concurrency-job"
NODES: tuple[str, ...] = tuple(f"node-{i:02d}" for i in range(16))
REPO_ROOT = Path(__file__).resolve().parent.parent
#: (weight, smallest, largest) record sizes; a header needs about 20 bytes.
SIZE_CLASSES = ((40, 32, 200), (30, KiB, 64 * KiB), (20, 100 * KiB, 600 * KiB), (10, MiB, 2 * MiB))
#: Operations and their weights.
OPERATIONS = (("save", 40), ("load", 35), ("delete", 10), ("lookup", 10), ("list", 5))
#: Backend thresholds this scenario sets so its values take every write path.
S3_MULTIPART_THRESHOLD = MiB
REDIS_CHUNK_SIZE = 256 * KiB
FLAVOURS = ("sync", "async")
#: Weight of ``cleanup_correlation`` against the 100 of :data:`OPERATIONS` (about 3 % of ops).
CLEANUP_WEIGHT = 3
#: Failure messages a worker reports in full (it still counts every failure).
MAX_REPORTED = 50


def value_for(writer: int, sequence: int, node: int, size: int) -> bytes:
    """The exact bytes worker ``writer`` saves as its ``sequence``-th value of node ``node``.
    The version in the header is ``sequence * len(NODES) + node``, so a value names its node."""
    return versioned(writer, sequence * len(NODES) + node, size)


def check_value(node: int, value: Any, processes: int) -> str | None:
    """``None`` if ``value`` is a whole value some worker wrote for node ``node``, else why not."""
    if isinstance(value, (bytearray, memoryview)):
        value = bytes(value)
    if not isinstance(value, bytes):
        return f"loaded a {type(value).__name__}, not bytes"
    problem = check_versioned(value)
    if problem is not None:
        return problem
    writer, version, _rest = value.split(b":", 2)
    if int(version) % len(NODES) != node:
        return f"holds a value of {NODES[int(version) % len(NODES)]}, not {NODES[node]}"
    if not 0 <= int(writer) < processes:
        return f"names writer {int(writer)}, but only {processes} workers ran"
    return None


def _size(rng: random.Random) -> int:
    _weight, low, high = rng.choices(SIZE_CLASSES, [c[0] for c in SIZE_CLASSES])[0]
    return rng.randint(low, high)


def tuned(backend: Backend) -> Backend:
    """``backend`` with the thresholds that make this scenario's values chunked / multipart."""
    if backend.name == "s3":
        return replace(
            backend, options={**backend.options, "multipart_threshold": S3_MULTIPART_THRESHOLD}
        )
    if backend.name == "redis":
        return replace(backend, options={**backend.options, "chunk_size": REDIS_CHUNK_SIZE})
    return backend


# -- the worker (child process) ------------------------------------------------------------------


@dataclass(frozen=True)
class _Op:
    """One call: ``mgr.<name>(*args)`` (or ``store.delete``), or its ``a`` twin."""

    name: str
    args: tuple[Any, ...]


@dataclass
class _Tally:
    counts: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    failed: int = 0

    def fail(self, message: str) -> None:
        self.failed += 1
        if len(self.failures) < MAX_REPORTED:
            self.failures.append(message)


#: What a worker plan receives for each op: ``(result, None)`` or ``(None, exception)``.
_Reply = tuple[Any, BaseException | None]


def worker_plan(
    index: int, ops: int, seed: int, processes: int, tally: _Tally, cleanup_weight: int = 0
) -> Generator[_Op, _Reply, None]:
    """The worker's operations, written once; :func:`_drive` and :func:`_adrive` run it.

    ``cleanup_weight`` > 0 mixes in ``cleanup_correlation`` (a prefix delete of every node while
    the others save), with that weight against the 100 of :data:`OPERATIONS`.
    """
    import ckpt_core as ckpt

    rng = random.Random(seed)
    ctx = ckpt.RunContext(run_id=f"worker-{index}", correlation_id=CORRELATION)
    keys = {node: _record_key(node) for node in NODES}
    sequence = 0
    names = [name for name, _ in OPERATIONS] + ["cleanup_correlation"]
    weights = [weight for _, weight in OPERATIONS] + [cleanup_weight]
    for i in range(ops):
        op = rng.choices(names, weights)[0]
        node = rng.randrange(len(NODES))
        where = f"worker {index} op {i} ({op} {NODES[node]})"
        if op == "save":
            sequence += 1
            size = _size(rng)
            _, error = yield _Op("save", (ctx, NODES[node], value_for(index, sequence, node, size)))
            if error is None:
                tally.counts["bytes_saved"] += size
        elif op == "load":
            value, error = yield _Op("load", (ctx, NODES[node]))
            if isinstance(error, ckpt.CheckpointNotFound):
                tally.counts["misses"] += 1
                continue
            if error is None:
                problem = check_value(node, value, processes)
                if problem is not None:
                    tally.fail(f"{where}: torn or wrong read: {problem}")
                    continue
                tally.counts["loads_verified"] += 1
                tally.counts["bytes_loaded"] += len(value)
        elif op == "delete":
            _, error = yield _Op("delete", (keys[NODES[node]],))
        elif op == "cleanup_correlation":
            _, error = yield _Op("cleanup_correlation", (CORRELATION,))
        elif op == "lookup":
            info, error = yield _Op("lookup", (ctx, NODES[node]))
            if error is None and info is not None and info.key != keys[NODES[node]]:
                tally.fail(f"{where}: lookup answered {info.key!r}")
                continue
        else:
            infos, error = yield _Op("list", (ctx,))
            if error is None:
                listed = [info.key for info in infos]
                strays = sorted(set(listed) - set(keys.values()))
                if strays or len(listed) != len(set(listed)):
                    tally.fail(f"{where}: list shows {strays[:3]} (or duplicates) besides records")
                    continue
        if error is not None:
            tally.fail(f"{where}: {type(error).__name__}: {error}")
            continue
        tally.counts[op + "s"] += 1


def _record_key(node: str) -> str:
    from ckpt_core import keys

    return keys.record_key(NAMESPACE, "correlation", CORRELATION, node)


def _drive(mgr: Any, plan: Generator[_Op, _Reply, None]) -> None:
    reply: _Reply | None = None
    while True:
        try:
            op = plan.send(reply) if reply is not None else next(plan)
        except StopIteration:
            return
        target = mgr.store if op.name == "delete" else mgr
        try:
            reply = (getattr(target, op.name)(*op.args), None)
        except Exception as exc:
            reply = (None, exc)


async def _adrive(mgr: Any, plan: Generator[_Op, _Reply, None]) -> None:
    reply: _Reply | None = None
    while True:
        try:
            op = plan.send(reply) if reply is not None else next(plan)
        except StopIteration:
            return
        target = mgr.store if op.name == "delete" else mgr
        try:
            reply = (await getattr(target, "a" + op.name)(*op.args), None)
        except Exception as exc:
            reply = (None, exc)


def child_main() -> None:
    """Worker: read the config line, open the store, say ready, wait for go, run, report."""
    config = json.loads(sys.stdin.readline())
    import ckpt_core as ckpt

    store = Backend(**config["backend"]).open()
    mgr = ckpt.CheckpointManager(store, namespace=NAMESPACE)
    tally = _Tally()
    plan = worker_plan(
        config["index"],
        config["ops"],
        config["seed"],
        config["processes"],
        tally,
        config.get("cleanup_weight", 0),
    )
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    if sys.stdin.readline().strip() != "go":
        return
    started = time.monotonic()
    if config["flavour"] == "async":

        async def run() -> None:
            try:
                await _adrive(mgr, plan)
            finally:
                await store.aclose()

        asyncio.run(run())
    else:
        _drive(mgr, plan)
        store.close()
    report = {
        "counts": dict(tally.counts),
        "failures": tally.failures,
        "failed": tally.failed,
        "seconds": time.monotonic() - started,
    }
    sys.stdout.write(json.dumps(report) + "\n")
    sys.stdout.flush()


# -- the scenario (parent) -----------------------------------------------------------------------


@dataclass
class ConcurrencyResult(ScenarioResult):
    """What one concurrency scenario did; ``failures`` empty means it passed.

    ``iterations`` is ``processes * ops``; ``records_checked`` counts the loads whose value was
    verified byte for byte (by the workers, then once per node by the parent).
    """

    processes: int = 0
    iterations: int = 0
    saves: int = 0
    deletes: int = 0
    lookups: int = 0
    lists: int = 0
    cleanups: int = 0
    #: Loads the parent verified after the workers finished (part of ``records_checked``).
    final_checked: int = 0
    bytes_saved: int = 0
    bytes_loaded: int = 0
    work_seconds: float = 0.0

    def detail(self) -> str:
        per_process = self.iterations // max(1, self.processes)
        return (
            f"{self.scenario}: {self.processes} processes x {per_process} ops in "
            f"{self.work_seconds:.1f} s ({self.seconds:.0f} s with start-up): "
            f"{self.saves} saves ({self.bytes_saved / MiB:.0f} MiB), {self.records_checked} loads "
            f"verified byte for byte ({self.bytes_loaded / MiB:.0f} MiB), {self.misses} misses, "
            f"{self.deletes} deletes, {self.lookups} lookups, {self.lists} lists"
            + (f", {self.cleanups} cleanup_correlation" if self.cleanups else "")
            + f"; {len(self.failures)} failures"
        )


class _Worker:
    def __init__(self, backend: Backend, config: dict[str, Any], log: IO[bytes]) -> None:
        self.index = config["index"]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "faults.concurrency", "--child"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            cwd=REPO_ROOT,
        )
        backend_config = {"name": backend.name, "url": backend.url, "options": backend.options}
        assert self.process.stdin is not None
        self.process.stdin.write(
            (json.dumps({"backend": backend_config, **config}) + "\n").encode()
        )
        self.process.stdin.flush()

    def line(self, timeout: float) -> bytes:
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        return self.process.stdout.readline() if ready else b""

    def send(self, text: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(text.encode())
        self.process.stdin.flush()

    def reap(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(30)
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


def run_concurrency_scenario(
    backend: Backend,
    *,
    processes: int = 8,
    ops: int = 1000,
    seed: int = 20261124,
    workdir: str | os.PathLike[str] | None = None,
    timeout: float = 1800.0,
    cleanup_weight: int = CLEANUP_WEIGHT,
) -> ConcurrencyResult:
    """Run ``processes`` workers x ``ops`` operations on ``backend`` (see the module docstring)
    and check the store afterwards. Never raises for a found failure: it is in the result.

    ``cleanup_weight`` mixes ``cleanup_correlation`` (a prefix delete of the whole correlation
    while the others save and load) into the workers' ops; 0 leaves it out. See
    :func:`worker_plan`.
    """
    import ckpt_core as ckpt

    backend = tuned(backend)
    result = ConcurrencyResult(f"concurrency/{backend.name}", processes=processes)
    result.iterations = processes * ops
    own_workdir = workdir is None
    work = Path(workdir or tempfile.mkdtemp(prefix=f"ckpt-concurrency-{backend.name}-"))
    work.mkdir(parents=True, exist_ok=True)
    log_path = work / "workers.log"
    started = time.monotonic()
    store = backend.open()
    workers: list[_Worker] = []
    try:
        with open(log_path, "ab") as log:
            for index in range(processes):
                config = {
                    "index": index,
                    "ops": ops,
                    "seed": seed * 1000 + index,
                    "processes": processes,
                    "flavour": FLAVOURS[index % len(FLAVOURS)],
                    "cleanup_weight": cleanup_weight,
                }
                workers.append(_Worker(backend, config, log))
            for worker in workers:  # every worker has imported ckpt and opened its store
                if worker.line(120).strip() != b"ready":
                    raise RuntimeError(f"worker {worker.index} did not start; see {log_path}")
            go = time.monotonic()
            for worker in workers:
                worker.send("go\n")
            for worker in workers:
                _collect(worker, result, timeout - (time.monotonic() - started), log_path)
            result.work_seconds = time.monotonic() - go
        _check_after(ckpt, store, backend, result)
    except Exception as exc:
        result.failures.append(f"{result.scenario}: harness error: {type(exc).__name__}: {exc}")
    finally:
        for worker in workers:
            worker.reap()
        with contextlib.suppress(Exception):
            if backend.name != "local":
                store.delete_prefix("")
        with contextlib.suppress(Exception):
            store.close()
        result.seconds = time.monotonic() - started
        if own_workdir and not result.failures:
            shutil.rmtree(work, ignore_errors=True)
    return result


def _collect(worker: _Worker, result: ConcurrencyResult, timeout: float, log: Path) -> None:
    line = worker.line(max(1.0, timeout))
    if not line:
        result.failures.append(
            f"{result.scenario}: worker {worker.index} reported nothing "
            f"(exit {worker.process.poll()}); see {log}"
        )
        return
    report = json.loads(line)
    counts = report["counts"]
    result.saves += counts.get("saves", 0)
    result.records_checked += counts.get("loads_verified", 0)
    result.misses += counts.get("misses", 0)
    result.deletes += counts.get("deletes", 0)
    result.lookups += counts.get("lookups", 0)
    result.lists += counts.get("lists", 0)
    result.cleanups += counts.get("cleanup_correlations", 0)
    result.bytes_saved += counts.get("bytes_saved", 0)
    result.bytes_loaded += counts.get("bytes_loaded", 0)
    result.failures += [f"{result.scenario}: {message}" for message in report["failures"]]
    hidden = report["failed"] - len(report["failures"])
    if hidden > 0:
        result.failures.append(f"{result.scenario}: worker {worker.index}: {hidden} more failures")
    worker.process.wait(60)
    if worker.process.returncode != 0:
        result.failures.append(
            f"{result.scenario}: worker {worker.index} exited with {worker.process.returncode}"
        )


def _check_after(ckpt: Any, store: Any, backend: Backend, result: ConcurrencyResult) -> None:
    """Every node loads whole (or is missing), the listing holds records only, no debris."""
    mgr = ckpt.CheckpointManager(store, namespace=NAMESPACE)
    ctx = ckpt.RunContext(run_id="checker", correlation_id=CORRELATION)
    scenario = result.scenario
    for node, name in enumerate(NODES):
        try:
            value = mgr.load(ctx, name)
        except ckpt.CheckpointNotFound:
            continue
        except Exception as exc:
            result.failures.append(f"{scenario}: final load of {name}: {type(exc).__name__}: {exc}")
            continue
        problem = check_value(node, value, result.processes)
        if problem:
            result.failures.append(f"{scenario}: final load of {name}: {problem}")
        else:
            result.records_checked += 1
            result.final_checked += 1
    listed = {info.key for info in store.list("")}
    strays = sorted(listed - {_record_key(node) for node in NODES})
    if strays:
        result.failures.append(f"{scenario}: the store lists non-records: {strays[:5]}")
    if backend.name == "local":
        temp = [
            os.path.join(d, f) for d, _, files in os.walk(backend.url) for f in files if f[0] == "."
        ]
        if temp:
            result.failures.append(f"{scenario}: temp files left behind: {temp[:5]}")
    elif backend.name == "s3":
        fs = store.fs
        bucket, prefix, _ = fs.split_path(backend.url)
        uploads = fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=prefix)
        if uploads.get("Uploads"):
            result.failures.append(
                f"{scenario}: {len(uploads['Uploads'])} multipart uploads left open"
            )
    elif backend.name == "redis":
        leaks = _redis_chunks_without_ttl(store)
        if leaks:
            result.failures.append(
                f"{scenario}: {len(leaks)} Redis chunks no manifest references and without a "
                f"TTL (they never expire), e.g. {leaks[:3]}"
            )


def _redis_chunks_without_ttl(store: Any) -> list[bytes]:
    """Chunk keys (``<record>\\0<gen>\\0<i>``) of a generation no manifest publishes, and
    without a TTL: a leak. Stale chunks with a TTL are expected to expire on their own."""
    client = store._client
    published: dict[bytes, bytes] = {}
    leaks: list[bytes] = []
    for rkey in client.scan_iter(match=store._ns + b"*", count=1000):
        parts = rkey[len(store._ns) :].split(b"\x00")
        if len(parts) != 3 or not parts[0]:
            continue
        record = store._ns + parts[0]
        if record not in published:
            is_hash = client.type(record) == b"hash"
            published[record] = (client.hget(record, "gen") if is_hash else None) or b""
        if parts[1] != published[record] and client.pttl(rkey) < 0:
            leaks.append(rkey)
    return leaks


if __name__ == "__main__":
    if sys.argv[1:] == ["--child"]:
        child_main()
    else:
        sys.exit("usage: python -m faults.concurrency --child (a worker); run python -m faults")
