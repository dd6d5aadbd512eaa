"""The ``ckpt`` CLI against real local, S3 (SeaweedFS) and Redis stores.

Each backend test writes records with the library, then drives the CLI the way a user would (typer's
runner, plus real subprocesses for the entry points) and checks what it prints and what is left in
the store.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import ckpt_core as ckpt
from ckpt_core.cli import inventory
from ckpt_core.cli.app import app
from ckpt_core.stores.base import ObjectInfo

from .servers import IN_CI, free_ports

ENV = {"COLUMNS": "120", "CKPT_SIGNING_KEY": "", "CKPT_STORAGE_OPTIONS": "", "CKPT_URL": ""}


@dataclass
class Target:
    """A store to point the CLI at: its URL, the --option pairs, and the store object itself."""

    kind: str
    url: str
    options: list[str]
    store: ckpt.Store
    secrets: list[str] = field(default_factory=list)

    def args(self, *extra: str) -> list[str]:
        out = [self.url, *extra]
        for pair in self.options:
            out += ["-o", pair]
        return out


@pytest.fixture(params=["local", "s3", "redis"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    if request.param == "local":
        url = str(tmp_path / "store")
        store = ckpt.open_store(url)
        yield Target("local", url, [], store)
    elif request.param == "s3":
        server = request.getfixturevalue("s3_server")
        url = f"s3://{server.bucket}/cli-{uuid.uuid4().hex[:12]}"
        store = ckpt.open_store(url, **server.storage_options())
        options = [
            f"endpoint_url={server.endpoint_url}",
            f"key={server.access_key}",
            f"secret={server.secret_key}",
            "client_kwargs.region_name=us-east-1",
            "config_kwargs.s3.addressing_style=path",
        ]
        yield Target("s3", url, options, store, [server.secret_key])
    else:
        store = request.getfixturevalue("redis_store_factory")()
        url = request.getfixturevalue("redis_url")
        yield Target("redis", url, [f"prefix={store.prefix}"], store)
    store.close()


def cli(*args: str, input: str | None = None, env: dict[str, str] | None = None) -> Any:
    runner = CliRunner()
    return runner.invoke(app, list(args), input=input, env={**ENV, **(env or {})})


unpickled: list[str] = []


def _mark_unpickled() -> str:
    unpickled.append("loaded")
    return "revived"


class Tripwire:
    """Unpickling this appends to ``unpickled``: proves whether ``show`` ran pickle."""

    def __reduce__(self) -> tuple[Callable[[], str], tuple[()]]:
        return (_mark_unpickled, ())


def populate(store: ckpt.Store) -> dict[str, str]:
    """Two namespaces; correlations ``job-7`` and ``job-7:b`` (a near-twin that must survive an
    rm of ``job-7``), a run-scoped record, and a key not laid out by ckpt."""
    mgr = ckpt.CheckpointManager(store, "etl")
    ctx = ckpt.RunContext(run_id="r-2", correlation_id="job-7", attempt=2)
    mgr.save(ctx, "extract", {"rows": [1, 2, 3]})
    mgr.save(ctx, "blob", b"\x00\x01payload")
    mgr.save(ctx, "tripwire", Tripwire())
    mgr.save(ctx, "scratch", "temp", scope=ckpt.Scope.RUN)
    twin = ckpt.RunContext(run_id="r-9", correlation_id="job-7:b")
    mgr.save(twin, "extract", {"rows": []})
    ckpt.CheckpointManager(store, "reports").save(ckpt.RunContext("w-1", "weekly"), "render", "x")
    store.put("reports/assets/orders", b"not a ckpt record")
    return {
        "extract": "etl/corr/job-7/extract",
        "blob": "etl/corr/job-7/blob",
        "tripwire": "etl/corr/job-7/tripwire",
        "scratch": "etl/run/r-2/scratch",
        "twin": "etl/corr/job-7%3Ab/extract",
        "render": "reports/corr/weekly/render",
        "other": "reports/assets/orders",
    }


def keys_of(store: ckpt.Store) -> set[str]:
    return {info.key for info in store.list("")}


def assert_no_secret(target: Target, text: str) -> None:
    for secret in target.secrets:
        assert secret not in text


# -- every command on every backend ------------------------------------------------------------
def test_ls_lists_every_record_with_scope_codec_and_other_keys(target: Target) -> None:
    keys = populate(target.store)
    result = cli("ls", *target.args("--json"))
    assert result.exit_code == 0, result.output
    records = {r["key"]: r for r in json.loads(result.stdout)["records"]}
    assert set(records) == set(keys.values())
    assert records[keys["extract"]] | {"age_seconds": 0, "modified": 0} == {
        "key": keys["extract"],
        "namespace": "etl",
        "scope": "correlation",
        "owner": "job-7",
        "node": "extract",
        "size": target.store.head(keys["extract"]).size,  # type: ignore[union-attr]
        "modified": 0,
        "age_seconds": 0,
        "codec": "json",
        "attempt": 2,
    }
    assert records[keys["twin"]]["owner"] == "job-7:b"
    assert records[keys["scratch"]]["scope"] == "run"
    assert records[keys["blob"]]["codec"] == "raw"
    assert records[keys["tripwire"]]["codec"] == "pickle"
    assert records[keys["other"]]["scope"] == "other"
    # Redis has no mtime: the age comes from the header.
    assert all(0 <= r["age_seconds"] < 600 for k, r in records.items() if k != keys["other"])
    assert_no_secret(target, result.output)

    table = cli("ls", *target.args())
    assert table.exit_code == 0, table.output
    assert "7 records" in table.stdout
    lines = table.stdout.splitlines()
    row = next(line for line in lines if "extract" in line and "job-7 " in line)
    assert "etl" in row and "corr" in row and "json" in row
    assert any("reports/assets/orders" in line and "other" in line for line in lines)
    assert_no_secret(target, table.output)

    only = cli("ls", *target.args("--namespace", "etl", "--correlation", "job-7", "--json"))
    assert {r["key"] for r in json.loads(only.stdout)["records"]} == {
        keys["extract"],
        keys["blob"],
        keys["tripwire"],
    }
    tree = cli("ls", *target.args("--tree", "--no-headers"))
    assert tree.exit_code == 0, tree.output
    assert "correlation job-7:b" in tree.stdout and "run r-2" in tree.stdout
    assert "other keys" in tree.stdout


def test_show_prints_header_and_preview_and_never_unpickles_without_flag(target: Target) -> None:
    keys = populate(target.store)
    result = cli("show", *target.args(keys["extract"]))
    assert result.exit_code == 0, result.output
    assert '{"rows":[1,2,3]}' in result.stdout
    assert "(verified)" in result.stdout and "job-7" in result.stdout

    by_name = cli("show", *target.args("-n", "etl", "-c", "job-7", "--node", "blob", "--json"))
    shown = json.loads(by_name.stdout)
    assert shown["preview"] == repr(b"\x00\x01payload")
    assert shown["header"]["attempt"] == 2 and shown["ok"] is True

    unpickled.clear()
    refused = cli("show", *target.args(keys["tripwire"], "--json"))
    assert refused.exit_code == 0, refused.output
    assert "not decoded" in json.loads(refused.stdout)["preview"]
    assert unpickled == []
    allowed = cli("show", *target.args(keys["tripwire"], "--allow-pickle", "--json"))
    assert json.loads(allowed.stdout)["preview"] == "'revived'"
    assert unpickled == ["loaded"]

    missing = cli("show", *target.args("etl/corr/job-7/nope"))
    assert missing.exit_code == 1
    assert "no record 'etl/corr/job-7/nope'" in missing.stderr


def test_stats_counts_records_and_bytes_by_namespace_and_scope(target: Target) -> None:
    keys = populate(target.store)
    size = {k: target.store.head(v).size for k, v in keys.items()}  # type: ignore[union-attr]
    result = cli("stats", *target.args("--json"))
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["records"] == 7 and data["bytes"] == sum(size.values())
    rows = {(r["namespace"], r["scope"]): r for r in data["by_namespace_scope"]}
    assert rows[("etl", "correlation")] == {
        "namespace": "etl",
        "scope": "correlation",
        "records": 4,
        "bytes": size["extract"] + size["blob"] + size["tripwire"] + size["twin"],
        "owners": 2,
    }
    assert rows[("etl", "run")]["records"] == 1 and rows[("etl", "run")]["owners"] == 1
    assert rows[("reports", "other")]["bytes"] == len(b"not a ckpt record")
    table = cli("stats", *target.args())
    assert "total" in table.stdout and " 7 " in table.stdout


def test_verify_finds_corruption_lists_the_bad_key_and_exits_1(target: Target) -> None:
    keys = populate(target.store)
    clean = cli("verify", *target.args())
    assert clean.exit_code == 0, clean.output
    assert "of 6 records" in clean.stdout and "all intact" in clean.stdout
    assert "1 key not laid out by ckpt skipped" in clean.stdout

    data = bytearray(bytes(target.store.get(keys["blob"])))  # type: ignore[arg-type]
    data[-40] ^= 0x01  # one bit of the payload
    target.store.put(keys["blob"], bytes(data))
    bad = cli("verify", *target.args("--json"))
    assert bad.exit_code == 1, bad.output
    report = json.loads(bad.stdout)
    assert report["checked"] == 7 and report["ok"] == 5
    assert [b["key"] for b in report["bad"]] == [keys["blob"]]
    assert "checksum mismatch" in report["bad"][0]["problem"]
    table = cli("verify", *target.args())
    assert table.exit_code == 1
    assert keys["blob"] in table.stdout and "1 corrupted" in table.stdout
    shown = cli("show", *target.args(keys["blob"]))
    assert shown.exit_code == 1 and "checksum mismatch" in shown.stderr


def test_verify_checks_signatures_with_the_signing_key(target: Target) -> None:
    mgr = ckpt.CheckpointManager(target.store, "signed", signing_key="k1")
    mgr.save(ckpt.RunContext("r", "c"), "n", [1])
    ckpt.CheckpointManager(target.store, "signed").save(ckpt.RunContext("r", "c"), "plain", 1)
    ok = cli("verify", *target.args("--signing-key", "k1", "-n", "signed", "--json"))
    report = json.loads(ok.stdout)
    assert ok.exit_code == 1 and report["signature_checked"] is True
    assert [b["key"] for b in report["bad"]] == ["signed/corr/c/plain"]
    assert "not signed" in report["bad"][0]["problem"]
    wrong = cli("verify", *target.args("-n", "signed", "--json"), env={"CKPT_SIGNING_KEY": "k2"})
    assert {b["key"] for b in json.loads(wrong.stdout)["bad"]} == {
        "signed/corr/c/n",
        "signed/corr/c/plain",
    }
    assert "k1" not in wrong.output


def test_rm_deletes_exactly_the_correlation_after_confirmation(target: Target) -> None:
    keys = populate(target.store)
    before = keys_of(target.store)
    declined = cli("rm", *target.args("-n", "etl", "--correlation", "job-7"), input="n\n")
    assert declined.exit_code == 1 and "nothing was deleted" in declined.stdout
    assert keys_of(target.store) == before
    scripted = cli("rm", *target.args("-n", "etl", "--correlation", "job-7", "--json"))
    assert scripted.exit_code == 2 and "pass --yes" in scripted.stderr
    assert keys_of(target.store) == before

    confirmed = cli("rm", *target.args("-n", "etl", "--correlation", "job-7"), input="y\n")
    assert confirmed.exit_code == 0, confirmed.output
    assert "deleted 3 records" in confirmed.stdout
    gone = {keys["extract"], keys["blob"], keys["tripwire"]}
    assert keys_of(target.store) == before - gone  # job-7:b is untouched

    by_run = cli("rm", *target.args("--run", "r-2", "--yes", "--json"))
    assert json.loads(by_run.stdout)["deleted"] == [keys["scratch"]]
    by_node = cli("rm", *target.args("-n", "reports", "--node", "render", "--yes"))
    assert by_node.exit_code == 0 and "deleted 1 record " in by_node.stdout
    other = cli("rm", *target.args("--key", keys["other"], "--yes"))
    assert other.exit_code == 0, other.output
    assert keys_of(target.store) == {keys["twin"]}
    nothing = cli("rm", *target.args("--correlation", "job-7", "--yes"))
    assert nothing.exit_code == 0 and "nothing to delete" in nothing.stdout


def test_gc_deletes_whole_groups_and_never_other_keys(target: Target) -> None:
    keys = populate(target.store)
    before = keys_of(target.store)
    young = cli("gc", *target.args("--older-than", "7d", "--json"))
    assert young.exit_code == 0, young.output
    assert json.loads(young.stdout)["count"] == 0 and keys_of(target.store) == before

    dry = cli("gc", *target.args("--older-than", "0s", "--dry-run", "--json"))
    planned = json.loads(dry.stdout)
    assert set(planned["would_delete"]) == before - {keys["other"]}
    assert keys_of(target.store) == before
    done = cli("gc", *target.args("--older-than", "0s"))
    assert done.exit_code == 0, done.output
    assert "deleted 6 records" in done.stdout
    assert keys_of(target.store) == {keys["other"]}


# -- gc selection (ages are synthetic here; the backends above run the real thing) -------------
def _entry(key: str, modified: float | None) -> inventory.Entry:
    return inventory.entry_for(ObjectInfo(key, 10, modified))


def test_gc_keep_last_protects_the_newest_groups_per_namespace_and_scope() -> None:
    day = 86400.0
    now = 100 * day
    entries = [
        _entry("etl/corr/c1/a", now - 30 * day),
        _entry("etl/corr/c1/b", now - 2 * day),  # c1's newest record is 2 days old
        _entry("etl/corr/c2/a", now - 20 * day),
        _entry("etl/corr/c3/a", now - 10 * day),
        _entry("etl/run/r1/a", now - 40 * day),
        _entry("etl/corr/c4/a", None),  # unknown age: kept
        _entry("etl/assets/x", now - 400 * day),  # not ckpt's layout: kept
    ]
    older = inventory.gc_candidates(entries, 7 * day, None, now)
    assert [e.key for e in older] == ["etl/corr/c2/a", "etl/corr/c3/a", "etl/run/r1/a"]
    kept_one = inventory.gc_candidates(entries, 7 * day, 1, now)
    assert [e.key for e in kept_one] == ["etl/corr/c2/a", "etl/corr/c3/a"]
    kept_two = inventory.gc_candidates(entries, None, 2, now)
    assert [e.key for e in kept_two] == ["etl/corr/c2/a"]


def test_gc_older_than_uses_real_file_ages(tmp_path: Path) -> None:
    store = ckpt.open_store(str(tmp_path))
    mgr = ckpt.CheckpointManager(store, "etl")
    mgr.save(ckpt.RunContext("r1", "old"), "a", 1)
    mgr.save(ckpt.RunContext("r2", "new"), "a", 2)
    ten_days_ago = time.time() - 10 * 86400
    os.utime(tmp_path / "etl" / "corr" / "old" / "a", (ten_days_ago, ten_days_ago))
    result = cli("gc", str(tmp_path), "--older-than", "7d")
    assert result.exit_code == 0, result.output
    assert "deleted 1 record" in result.stdout
    assert keys_of(store) == {"etl/corr/new/a"}


@pytest.mark.parametrize(
    ("text", "seconds"), [("7d", 604800.0), ("12h", 43200.0), ("30", 30.0), ("1.5m", 90.0)]
)
def test_durations(text: str, seconds: float) -> None:
    assert inventory.parse_duration(text) == seconds


def test_bad_duration_and_missing_gc_criteria_are_one_line_errors(tmp_path: Path) -> None:
    bad = cli("gc", str(tmp_path), "--older-than", "7 days")
    assert bad.exit_code == 2 and "'7 days' is not a duration" in bad.stderr
    neither = cli("gc", str(tmp_path))
    assert neither.exit_code == 2 and "--older-than" in neither.stderr


# -- errors and credentials ----------------------------------------------------------------------
def test_unreachable_store_is_one_line_exit_2_without_traceback() -> None:
    port = free_ports(1)[0]
    for command in ("ls", "stats", "verify"):
        result = cli(command, f"redis://:pw-{port}-secret@127.0.0.1:{port}/0")
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output
        assert f"127.0.0.1:{port}" in result.stderr and "unavailable" in result.stderr
        assert f"pw-{port}-secret" not in result.output
        assert len(result.stderr.strip().splitlines()) <= 3  # one message (wrapped at most)


def test_redis_password_is_never_printed(redis_server_factory: Callable[..., Any]) -> None:
    password = "hunter2-" + uuid.uuid4().hex[:8]
    server = redis_server_factory(password=password)
    url = server.url
    store = ckpt.open_store(url)
    populate(store)
    outputs = [
        cli("ls", url),
        cli("ls", url, "--json"),
        cli("stats", url),
        cli("stats", url, "--json"),
        cli("verify", url, "--json"),
        cli("show", url, "etl/corr/job-7/extract", "--json"),
        cli("gc", url, "--older-than", "7d", "--json"),
    ]
    assert [r.exit_code for r in outputs] == [0, 0, 0, 0, 0, 0, 0]
    assert "redis://:***@127.0.0.1" in outputs[1].stdout
    wrong = cli("ls", url.replace(password, password + "-wrong"))
    assert wrong.exit_code == 2
    outputs.append(wrong)
    for result in outputs:
        assert password not in result.output
    store.close()


def test_s3_secret_is_never_printed_even_when_refused(s3_server: Any) -> None:
    url = f"s3://{s3_server.bucket}/cli-{uuid.uuid4().hex[:8]}"
    base = [
        "-o", f"endpoint_url={s3_server.endpoint_url}",
        "-o", "client_kwargs.region_name=us-east-1",
        "-o", "config_kwargs.s3.addressing_style=path",
        "-o", f"key={s3_server.access_key}",
    ]  # fmt: skip
    wrong_secret = "wrong-" + uuid.uuid4().hex
    refused = cli("ls", url, *base, "-o", f"secret={wrong_secret}")
    assert refused.exit_code == 2, refused.output
    assert "Traceback" not in refused.output and wrong_secret not in refused.output
    env_options = json.dumps({"secret": s3_server.secret_key})
    ok = cli("stats", url, *base, env={"CKPT_STORAGE_OPTIONS": env_options})
    assert ok.exit_code == 0, ok.output
    assert s3_server.secret_key not in ok.output


def test_option_without_equals_is_rejected_without_echoing_it(tmp_path: Path) -> None:
    result = cli("ls", str(tmp_path), "-o", "supersecretvalue123")
    assert result.exit_code == 2
    assert "NAME=VALUE" in result.stderr and "supersecretvalue123" not in result.output


def test_parse_options_nests_dotted_names_and_parses_json() -> None:
    options = inventory.parse_options(
        ["client_kwargs.region_name=eu-west-1", "ttl=3600", "fsync=false", "key=abc"],
        {"CKPT_STORAGE_OPTIONS": '{"key": "from-env", "anon": false}'},
    )
    assert options == {
        "client_kwargs": {"region_name": "eu-west-1"},
        "ttl": 3600,
        "fsync": False,
        "key": "abc",
        "anon": False,
    }


# -- entry points ------------------------------------------------------------------------------
def test_help_lists_every_command() -> None:
    result = cli("--help")
    assert result.exit_code == 0
    for command in ("ls", "show", "rm", "gc", "verify", "stats"):
        assert command in result.stdout
        sub = cli(command, "--help")
        assert sub.exit_code == 0 and "--json" in sub.stdout, command


def test_python_dash_m_runs_the_cli_in_a_fresh_process(tmp_path: Path) -> None:
    ckpt.CheckpointManager(str(tmp_path), "etl").save(ckpt.RunContext("r", "c"), "n", {"a": 1})
    env = {**os.environ, "COLUMNS": "100"}
    out = subprocess.run(
        [sys.executable, "-m", "ckpt_core.cli", "ls", str(tmp_path), "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert [r["key"] for r in json.loads(out.stdout)["records"]] == ["etl/corr/c/n"]


def test_installed_console_script(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("ckpt")
    if not script.exists():
        if IN_CI:
            pytest.fail("the ckpt console script is not installed (pip install -e .)")
        pytest.skip("the ckpt console script is not installed yet (pip install -e .)")
    out = subprocess.run(
        [str(script), "stats", str(tmp_path), "--json"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["records"] == 0


def test_import_ckpt_core_does_not_import_typer_or_rich() -> None:
    code = (
        "import ckpt_core, sys; "
        "print(sorted(m for m in ('typer', 'rich', 'click') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_pickle_tripwire_really_trips() -> None:
    unpickled.clear()
    assert pickle.loads(pickle.dumps(Tripwire())) == "revived"
    assert unpickled == ["loaded"]


def test_error_messages_are_shown_verbatim_apart_from_secrets() -> None:
    """Messages are text, not URLs: an endpoint URL with a query inside one must not be
    re-encoded (spaces turned into '+') by the redaction."""
    port = free_ports(1)[0]
    result = cli(
        "ls",
        "s3://bucket/prefix",
        "-o", f"endpoint_url=http://127.0.0.1:{port}",
        "-o", "key=AKEXAMPLE",
        "-o", "secret=never-print-me-123",
        "-o", "config_kwargs.retries.total_max_attempts=1",
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert f"127.0.0.1:{port}" in result.stderr
    assert "+Check" not in result.stderr and "Check that" in result.stderr
    assert "never-print-me-123" not in result.output
