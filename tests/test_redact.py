"""Credentials never reach repr, logs, errors or the CLI: one redaction function for all of them."""

from __future__ import annotations

import pytest

import ckpt_core as ckpt
from ckpt_core.redact import is_secret_name, redact_options, redact_text, redact_url

SECRET = "hunter2"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://user:hunter2@host:6379/0", "redis://user:***@host:6379/0"),
        ("redis://:hunter2@host:6379/0", "redis://:***@host:6379/0"),
        ("rediss://default:hunter2@h.example.com:6380", "rediss://default:***@h.example.com:6380"),
        ("https://hunter2@github.com/org/repo", "https://***@github.com/org/repo"),
        ("redis://u:p%40ss:hunter2@host/0", "redis://u:***@host/0"),  # last @ ends userinfo
        ("s3://bucket/prefix?secret=hunter2&region=eu", "s3://bucket/prefix?secret=***&region=eu"),
        ("s3://bucket/p?AWS_SESSION_TOKEN=hunter2", "s3://bucket/p?AWS_SESSION_TOKEN=***"),
        # Unescaped /, ? or # in a password: urlsplit alone would end the host inside it.
        ("redis://u:hun/ter2@host:6379/0", "redis://u:***@host:6379/0"),
        ("redis://u:hun#ter2@host", "redis://u:***@host"),
        ("redis://u:hun?ter2@host/0", "redis://u:***@host/0"),
        ("redis://:/hunter2@host", "redis://:***@host"),
        # ...but a port followed by an @ in the path or query is not a password.
        ("http://host:8080/x?mail=a@b.com", "http://host:8080/x?mail=a%40b.com"),
        ("s3://bucket/a:b@v2", "s3://bucket/a:b@v2"),
        ("s3://bucket/prefix", "s3://bucket/prefix"),
        ("memory://name", "memory://name"),
        ("./relative/dir", "./relative/dir"),
        ("/abs/dir@v2", "/abs/dir@v2"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected
    assert SECRET not in redact_url(url)


def test_unparseable_url_is_hidden_entirely() -> None:
    assert redact_url("redis://[::1:hunter2@host") == "<unparseable url>"


def test_redact_options_nested() -> None:
    options = {
        "key": "AKIA",
        "secret": SECRET,
        "token": SECRET,
        "endpoint_url": "http://127.0.0.1:8333",
        "client_kwargs": {"aws_secret_access_key": SECRET, "region_name": "eu"},
        "password": None,
        "anon": False,
    }
    redacted = redact_options(options)
    assert SECRET not in repr(redacted)
    assert redacted["endpoint_url"] == "http://127.0.0.1:8333"
    assert redacted["client_kwargs"]["region_name"] == "eu"
    assert redacted["client_kwargs"]["aws_secret_access_key"] == "***"
    assert redacted["password"] is None and redacted["anon"] is False
    assert options["secret"] == SECRET  # the input is not modified


@pytest.mark.parametrize(
    "name", ["password", "aws_secret_access_key", "token", "Authorization", "private_key"]
)
def test_secret_names(name: str) -> None:
    assert is_secret_name(name)


@pytest.mark.parametrize("name", ["endpoint_url", "region_name", "anon", "ttl", "block_size"])
def test_plain_names(name: str) -> None:
    assert not is_secret_name(name)


def test_signing_key_never_shows(monkeypatch: pytest.MonkeyPatch) -> None:
    mgr = ckpt.CheckpointManager(ckpt.MemoryStore(), signing_key=SECRET)
    assert SECRET not in repr(mgr)
    ctx = ckpt.RunContext("r")
    mgr.save(ctx, "n", 1)
    with pytest.raises(ckpt.CheckpointCorrupted) as err:
        ckpt.CheckpointManager(mgr.store, signing_key="wrong-" + SECRET).load(ctx, "n")
    assert SECRET not in str(err.value)
    with pytest.raises(ckpt.CheckpointNotFound) as missing:
        mgr.load(ctx, "other")
    assert SECRET not in str(missing.value)


def test_redact_url_keeps_unix_socket_slashes() -> None:
    assert redact_url("unix:///run/redis.sock?password=hunter2") == (
        "unix:///run/redis.sock?password=***"
    )


def test_redact_text_masks_url_passwords_and_secrets_without_reencoding() -> None:
    text = 'GET s3://b/k?encoding-type=url" failed for redis://u:hunter2@h:6379/0, key S3CRET'
    out = redact_text(text, ["S3CRET"])
    assert "hunter2" not in out and "S3CRET" not in out
    assert 'encoding-type=url"' in out and "redis://u:***@h:6379/0" in out
