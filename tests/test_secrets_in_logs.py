"""Credentials never reach logs, errors, repr or the CLI (issue #6, item 6): a scan.

Every logger that could see a credential (root, ``ckpt*``, redis, s3fs, botocore, fsspec, ...) is
set to DEBUG and captured (``caplog``, plus ``capfd`` for anything written to the process's
stdout/stderr), then the core is exercised with distinctive secrets: a password-protected private
Redis (the password holds ``+`` and ``$``, so its URL-encoded form differs), S3 with a key and
secret, a signing key and an encryption key. Operations: open, repr/str, save, load, list, a
corrupted load, a wrong password, wrong keys, servers that are down, ``ckpt.run`` failing to clean
up, and the CLI (``ls``/``show``/``stats``/``verify``). Everything said anywhere (log messages and
their tracebacks, error messages and their chained causes, reprs, CLI output) is searched for
each secret, its URL-encoded forms and its distinctive core. The orchestrators are scanned in
``tests/integration/test_secrets_integrations.py``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import traceback
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
from typer.testing import CliRunner

import ckpt_core as ckpt
from ckpt_core import crypto
from ckpt_core.cli.app import app

from .servers import SeaweedServer, free_ports

TOKEN = uuid.uuid4().hex[:12]
#: ``+`` and ``$`` are legal unescaped in a URL's userinfo, and change when URL-encoded.
REDIS_PASSWORD = f"rpw{TOKEN}+$x"
SIGNING_KEY = f"skey{TOKEN}"
ENCRYPTION_KEY = f"ekey{TOKEN}"
WRONG_PASSWORD = f"wrongpw{TOKEN}+$y"
WRONG_S3_SECRET = f"wrongs3{TOKEN}"

#: Loggers that see ckpt's work, or the clients it drives. Several of them are not imported
#: by this file; setting their level works all the same.
LOGGERS = [
    "",
    "ckpt",
    "ckpt_core",
    "ckpt.prefect",
    "ckpt.dagster",
    "redis",
    "s3fs",
    "fsspec",
    "botocore",
    "boto3",
    "aiobotocore",
    "urllib3",
    "asyncio",
    "prefect",
    "dagster",
]


def forms(secret: str) -> set[str]:
    """The ways a secret can be written down: as is, URL-encoded, and its distinctive core (so
    a secret cut in half by a redaction that stopped at ``+`` or ``$`` is still found)."""
    core = secret.split("+")[0]
    return {secret, quote(secret, safe=""), quote_plus(secret), quote(secret), core}


def exception_text(exc: BaseException) -> str:
    """A raised error as anyone could see it: message, repr, the traceback as printed, and every
    chained cause and context (even a suppressed one, which error trackers may still report)."""
    parts = [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        parts += [str(link), repr(link)]
        link = link.__cause__ or link.__context__
    return "\n".join(parts)


class LeakScan:
    """Collects everything said during a test and checks it for secrets."""

    def __init__(self, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> None:
        self.caplog = caplog
        self.capfd = capfd
        self.secrets: list[str] = [SIGNING_KEY, ENCRYPTION_KEY]
        self.texts: list[tuple[str, str]] = []
        self.errors = 0

    def secret(self, *values: str) -> None:
        self.secrets += values

    def said(self, where: str, text: Any) -> None:
        self.texts.append((where, text if isinstance(text, str) else repr(text)))

    def expect(
        self, where: str, call: Callable[[], Any], *errors: type[BaseException]
    ) -> BaseException:
        """Run ``call``, which must raise one of ``errors``; record everything the error says."""
        with pytest.raises(errors or (Exception,)) as info:
            call()
        self.errors += 1
        self.said(where, exception_text(info.value))
        return info.value

    def records(self) -> Iterable[tuple[str, str]]:
        formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
        for record in self.caplog.records:
            where = f"log {record.name}"
            yield where, formatter.format(record)  # message, exc_info and stack_info
            yield where, repr(record.args)
            yield where, repr({k: v for k, v in vars(record).items() if k not in ("msg", "args")})

    def check(self) -> None:
        out, err = self.capfd.readouterr()
        texts = [*self.texts, *self.records(), ("stdout", out), ("stderr", err)]
        leaks = [
            f"{where}: {form!r} in {text[max(0, text.find(form) - 120) : text.find(form) + 80]!r}"
            for where, text in texts
            for secret in self.secrets
            for form in forms(secret)
            if form in text
        ]
        assert not leaks, "secrets leaked:\n" + "\n".join(leaks)
        # The scan looked at something: logs were captured at DEBUG and errors were raised.
        assert self.caplog.records, "no log records were captured"
        assert any(r.levelno == logging.DEBUG for r in self.caplog.records)


@pytest.fixture
def scan(caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> Iterator[LeakScan]:
    for name in LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)
    yield LeakScan(caplog, capfd)


def exercise_manager(scan: LeakScan, label: str, mgr: ckpt.CheckpointManager) -> None:
    """Everything a pipeline does with a manager, with a few reprs and a corrupted record."""
    ctx = ckpt.RunContext(run_id=f"run-{TOKEN}", correlation_id=f"job-{TOKEN}", attempt=2)
    scan.said(f"{label} repr", repr(mgr) + str(mgr) + repr(mgr.store) + str(mgr.store))
    scan.said(f"{label} url", mgr.store.url)
    info = mgr.save(ctx, "extract", {"rows": [1, 2, 3]})
    scan.said(f"{label} info", info)
    assert mgr.load(ctx, "extract") == {"rows": [1, 2, 3]}
    assert asyncio.run(mgr.aload(ctx, "extract")) == {"rows": [1, 2, 3]}
    scan.said(f"{label} list", mgr.list(ctx))
    scan.said(f"{label} lookup", mgr.lookup(ctx, "extract"))
    scan.expect(f"{label} miss", lambda: mgr.load(ctx, "missing"), ckpt.CheckpointNotFound)
    mgr.store.put(mgr.key_for(ctx, "broken"), b"CKPT\x01\x00garbage")
    scan.expect(f"{label} corrupted", lambda: mgr.load(ctx, "broken"), ckpt.CheckpointCorrupted)
    other_keys = ckpt.CheckpointManager(
        mgr.store, mgr.namespace, signing_key="other-" + SIGNING_KEY, encryption_key="x" * 20
    )
    scan.expect(
        f"{label} wrong keys", lambda: other_keys.load(ctx, "extract"), ckpt.CheckpointCorrupted
    )
    no_keys = ckpt.CheckpointManager(mgr.store, mgr.namespace)
    scan.expect(f"{label} no key", lambda: no_keys.load(ctx, "extract"), ckpt.CheckpointCorrupted)
    assert mgr.finish(ctx, succeeded=True) >= 1


# -- Redis with a password ---------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_redis_password_and_keys_never_leak(
    scan: LeakScan, redis_server_factory: Callable[..., Any]
) -> None:
    server = redis_server_factory(password=REDIS_PASSWORD)
    scan.secret(REDIS_PASSWORD, WRONG_PASSWORD)
    url = server.url  # redis://:rpw...+$x@127.0.0.1:port/0
    encoded_url = url.replace(REDIS_PASSWORD, quote(REDIS_PASSWORD, safe=""))
    for label, target in (("url", url), ("encoded url", encoded_url)):
        mgr = ckpt.CheckpointManager(
            target, namespace="leaks", signing_key=SIGNING_KEY, encryption_key=ENCRYPTION_KEY
        )
        exercise_manager(scan, f"redis {label}", mgr)
        mgr.close()
    # The password as an option instead of in the URL.
    base = f"redis://127.0.0.1:{server.port}/0"
    with ckpt.open_store(base, password=REDIS_PASSWORD) as store:
        scan.said("redis option repr", repr(store))
        store.put("k/v", b"x")
    # Refused authentication, and a missing one.
    for label, target in (
        ("wrong password", url.replace(REDIS_PASSWORD, WRONG_PASSWORD)),
        ("no password", base),
    ):
        store = ckpt.open_store(target)
        scan.expect(f"redis {label}", functools.partial(store.get, "k/v"), ckpt.StoreConfigError)
        scan.expect(
            f"redis {label} async",
            functools.partial(asyncio.run, store.aget("k/v")),
            ckpt.CheckpointError,
        )
        store.close()
    scan.check()


def test_redis_down_never_leaks(scan: LeakScan) -> None:
    scan.secret(REDIS_PASSWORD)
    port = free_ports(1)[0]
    url = f"redis://user:{REDIS_PASSWORD}@127.0.0.1:{port}/0"
    mgr = ckpt.CheckpointManager(url, namespace="leaks", signing_key=SIGNING_KEY)
    scan.said("down repr", repr(mgr))
    ctx = ckpt.RunContext("r")
    scan.expect("down save", lambda: mgr.save(ctx, "n", 1), ckpt.StoreUnavailable)
    scan.expect("down load", lambda: mgr.load(ctx, "n"), ckpt.StoreUnavailable)
    scan.expect("down list", lambda: mgr.list(ctx), ckpt.StoreUnavailable)
    scan.expect("down async", lambda: asyncio.run(mgr.aload(ctx, "n")), ckpt.StoreUnavailable)

    # ckpt.run cannot clean up after a failure and logs why, with a traceback.
    @ckpt.checkpointed
    def step() -> int:
        raise RuntimeError("the step fails")

    def failing_run() -> None:
        with ckpt.run(f"job-{TOKEN}", store=url, signing_key=SIGNING_KEY):
            step()

    scan.expect("ckpt.run down", failing_run, RuntimeError, ckpt.CheckpointError)
    mgr.close()
    scan.check()


# -- S3 with a key and secret ------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_s3_secret_and_keys_never_leak(scan: LeakScan, s3_server: SeaweedServer) -> None:
    scan.secret(s3_server.secret_key, WRONG_S3_SECRET)
    url = f"s3://{s3_server.bucket}/leaks-{TOKEN}"
    options = s3_server.storage_options()
    mgr = ckpt.CheckpointManager(
        url, namespace="leaks", signing_key=SIGNING_KEY, encryption_key=ENCRYPTION_KEY, **options
    )
    exercise_manager(scan, "s3", mgr)
    mgr.store.delete_prefix("")
    mgr.close()

    refused = ckpt.open_store(url, **s3_server.storage_options(secret=WRONG_S3_SECRET))
    scan.said("s3 refused repr", repr(refused))
    scan.expect("s3 wrong secret", lambda: refused.put("a/b", b"x"), ckpt.CheckpointError)
    refused.close()

    down_endpoint = f"http://127.0.0.1:{free_ports(1)[0]}"
    down = ckpt.open_store(url, **s3_server.storage_options(endpoint_url=down_endpoint))
    scan.expect("s3 down", lambda: down.get("a/b"), ckpt.StoreUnavailable)
    down.close()
    scan.check()


# -- reprs of the key objects ------------------------------------------------------------------


def test_key_objects_and_errors_never_show_keys(scan: LeakScan) -> None:
    ring = crypto.keyring([ENCRYPTION_KEY, "second-" + ENCRYPTION_KEY])
    assert ring is not None
    scan.said("keyring", repr(ring) + str(ring) + repr(ring.primary) + str(ring.primary))
    mgr = ckpt.CheckpointManager(
        ckpt.MemoryStore(), signing_key=SIGNING_KEY, encryption_key=ENCRYPTION_KEY
    )
    scan.said("manager", repr(mgr) + str(mgr))
    exercise_manager(scan, "memory", mgr)
    logging.getLogger("ckpt").debug("scan marker")  # the capture works at DEBUG
    scan.check()


# -- the CLI -----------------------------------------------------------------------------------


def cli(scan: LeakScan, *args: str, env: dict[str, str] | None = None) -> Any:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200", **(env or {})})
    scan.said(f"ckpt {args[0]}", result.output)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        scan.said(f"ckpt {args[0]} exception", exception_text(result.exception))
    return result


def populate(store_or_url: Any, **options: Any) -> str:
    mgr = ckpt.CheckpointManager(
        store_or_url, "etl", signing_key=SIGNING_KEY, encryption_key=ENCRYPTION_KEY, **options
    )
    ctx = ckpt.RunContext(run_id="r-1", correlation_id="job-7")
    mgr.save(ctx, "extract", {"rows": [1, 2]})
    mgr.store.put(mgr.key_for(ctx, "broken"), b"CKPT\x01\x00garbage")
    key = mgr.key_for(ctx, "extract")
    mgr.close()
    return key


def run_every_command(scan: LeakScan, url: str, key: str, *options: str) -> list[int]:
    keys = ["--signing-key", SIGNING_KEY, "--encryption-key", ENCRYPTION_KEY]
    codes = [
        cli(scan, "ls", url, *options).exit_code,
        cli(scan, "ls", url, *options, "--json").exit_code,
        cli(scan, "show", url, key, *options, *keys).exit_code,
        cli(scan, "show", url, key, *options, "--json", *keys).exit_code,
        cli(scan, "stats", url, *options).exit_code,
        cli(scan, "verify", url, *options, *keys[:2]).exit_code,
        cli(scan, "verify", url, *options, "--json", "--signing-key", "w" + SIGNING_KEY).exit_code,
    ]
    # The keys given through the environment instead.
    env = {"CKPT_SIGNING_KEY": SIGNING_KEY, crypto.ENV_VAR: ENCRYPTION_KEY}
    codes.append(cli(scan, "show", url, key, *options, env=env).exit_code)
    return codes


@pytest.mark.timeout(180)
def test_cli_never_prints_secrets(
    scan: LeakScan, redis_server_factory: Callable[..., Any], s3_server: SeaweedServer
) -> None:
    server = redis_server_factory(password=REDIS_PASSWORD)
    scan.secret(REDIS_PASSWORD, WRONG_PASSWORD, s3_server.secret_key, WRONG_S3_SECRET)
    key = populate(server.url)
    encoded_url = server.url.replace(REDIS_PASSWORD, quote(REDIS_PASSWORD, safe=""))
    for url in (server.url, encoded_url):
        # show and the plain verify succeed; the broken record makes verify exit 1.
        assert run_every_command(scan, url, key) == [0, 0, 0, 0, 0, 1, 1, 0]
    base = f"redis://127.0.0.1:{server.port}/0"
    assert run_every_command(scan, base, key, "-o", f"password={REDIS_PASSWORD}")[0] == 0
    for bad in (server.url.replace(REDIS_PASSWORD, WRONG_PASSWORD), base):
        assert cli(scan, "ls", bad).exit_code == 2
    down = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{free_ports(1)[0]}/0"
    for command in ("ls", "stats", "verify"):
        assert cli(scan, command, down).exit_code == 2

    url = f"s3://{s3_server.bucket}/cli-leaks-{TOKEN}"
    key = populate(url, **s3_server.storage_options())
    s3_options = [
        "-o", f"endpoint_url={s3_server.endpoint_url}",
        "-o", "client_kwargs.region_name=us-east-1",
        "-o", "config_kwargs.s3.addressing_style=path",
        "-o", f"key={s3_server.access_key}",
    ]  # fmt: skip
    codes = run_every_command(scan, url, key, *s3_options, "-o", f"secret={s3_server.secret_key}")
    assert codes == [0, 0, 0, 0, 0, 1, 1, 0]
    assert cli(scan, "ls", url, *s3_options, "-o", f"secret={WRONG_S3_SECRET}").exit_code == 2
    down_options = ["-o", f"endpoint_url=http://127.0.0.1:{free_ports(1)[0]}"]
    assert cli(scan, "ls", url, *down_options, "-o", f"secret={s3_server.secret_key}").exit_code
    with ckpt.open_store(url, **s3_server.storage_options()) as store:
        store.delete_prefix("")
    scan.check()
