"""What the CLI knows about a store, computed without typer or rich (so it is easy to test).

A store is scanned once with ``list("")``; every key is parsed with
:func:`ckpt_core.keys.parse_record_key`. Keys laid out some other way (Dagster asset records,
foreign files) are kept as scope ``"other"``: the CLI shows them but never guesses what they mean,
and ``gc`` never deletes them.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from .. import keys
from ..envelope import MAGIC, open_record, read_header
from ..errors import CheckpointCorrupted, CheckpointError, StoreConfigError
from ..stores.base import ObjectInfo, Store

OTHER = "other"
#: Environment variable with storage options as a JSON object (merged under ``--option``).
OPTIONS_ENV = "CKPT_STORAGE_OPTIONS"
#: Parallel reads when headers or whole records are fetched (object stores are latency-bound).
WORKERS = 8


@dataclass(frozen=True)
class Entry:
    """One key of the store, with what its name and (optionally) its header say."""

    key: str
    size: int
    modified: float | None
    namespace: str
    scope: str  # "run", "correlation" or "other"
    owner: str  # run id or correlation id ("" for other keys)
    node: str
    header: Mapping[str, Any] | None = field(default=None, compare=False)
    header_error: str | None = None

    @property
    def codec(self) -> str | None:
        return None if self.header is None else str(self.header.get("codec"))

    @property
    def created(self) -> float | None:
        """When the record was written: the store's mtime, else the header's ``created_at``
        (Redis has no mtime)."""
        if self.modified is not None:
            return self.modified
        value = None if self.header is None else self.header.get("created_at")
        return float(value) if isinstance(value, (int, float)) else None

    def age(self, now: float | None = None) -> float | None:
        created = self.created
        return None if created is None else max(0.0, (now or time.time()) - created)

    def to_json(self, now: float | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "key": self.key,
            "namespace": self.namespace,
            "scope": self.scope,
            "owner": self.owner,
            "node": self.node,
            "size": self.size,
            "modified": self.created,
            "age_seconds": self.age(now),
        }
        if self.header is not None:
            out["codec"] = self.codec
            out["attempt"] = self.header.get("attempt")
            enc = self.header.get("enc")
            if isinstance(enc, Mapping):  # encrypted: the id of the key it needs
                out["key_id"] = enc.get("kid")
        if self.header_error is not None:
            out["error"] = self.header_error
        return out


def entry_for(info: ObjectInfo) -> Entry:
    parsed = keys.parse_record_key(info.key)
    if parsed is None:
        first = info.key.split(keys.SEP, 1)[0]
        namespace = keys.decode_component(first) if keys.SEP in info.key else ""
        return Entry(info.key, info.size, info.modified, namespace, OTHER, "", info.key)
    ns, scope, owner, node = parsed
    return Entry(info.key, info.size, info.modified, ns, scope, owner, node)


def scan(
    store: Store,
    *,
    namespace: str | None = None,
    correlation: str | None = None,
    run: str | None = None,
    node: str | None = None,
) -> list[Entry]:
    """Every key of the store (or of one namespace), filtered, sorted by key."""
    prefix = keys.encode_component(namespace) + keys.SEP if namespace is not None else ""
    entries = [entry_for(info) for info in store.list(prefix)]
    if namespace is not None:
        entries = [e for e in entries if e.namespace == namespace]
    if correlation is not None:
        entries = [e for e in entries if e.scope == "correlation" and e.owner == correlation]
    if run is not None:
        entries = [e for e in entries if e.scope == "run" and e.owner == run]
    if node is not None:
        entries = [e for e in entries if e.node == node]
    return sorted(entries, key=sort_key)


_SCOPE_ORDER = {"correlation": 0, "run": 1, OTHER: 2}


def sort_key(entry: Entry) -> tuple[str, int, str, str]:
    """Namespace, then correlations, runs and other keys, then id and node."""
    return (entry.namespace, _SCOPE_ORDER[entry.scope], entry.owner, entry.node)


def _with_header(store: Store, entry: Entry) -> Entry:
    try:
        data = store.get(entry.key)
        if data is None:  # deleted since the listing
            return replace(entry, header_error="gone")
        return replace(entry, header=read_header(data, entry.key))
    except CheckpointCorrupted as exc:
        return replace(entry, header_error=str(exc))


def with_headers(
    store: Store, entries: list[Entry], on_done: Callable[[], None] | None = None
) -> list[Entry]:
    """Read the header of each entry (the whole record is fetched: stores have no ranged get)."""

    def one(entry: Entry) -> Entry:
        result = _with_header(store, entry)
        if on_done is not None:
            on_done()
        return result

    with ThreadPoolExecutor(WORKERS) as pool:
        return list(pool.map(one, entries))


@dataclass(frozen=True)
class Verdict:
    key: str
    ok: bool
    problem: str | None = None
    signed: bool = False
    skipped: bool = False


def verify_one(
    store: Store, key: str, signing_key: bytes | None, foreign_ok: bool = False
) -> Verdict:
    """Check a record's checksum (and signature when a key is given) with ``open_record``.
    Encrypted records are verified as stored: no encryption key is needed.

    ``foreign_ok``: the key is not laid out by ckpt (scope ``other``), so a value that does not
    even start with the record magic is somebody else's file, skipped rather than "corrupted".
    """
    data = store.get(key)
    if data is None:
        return Verdict(key, False, "listed but gone when read (deleted concurrently?)")
    if foreign_ok and bytes(memoryview(data)[: len(MAGIC)]) != MAGIC:
        return Verdict(key, True, "not a ckpt record", skipped=True)
    try:
        opened = open_record(data, key, signing_key, decrypt=False)
    except CheckpointCorrupted as exc:
        return Verdict(key, False, str(exc))
    return Verdict(key, True, None, opened.signed)


def verify_all(
    store: Store,
    entries: Iterable[Entry],
    signing_key: bytes | None,
    on_done: Callable[[], None] | None = None,
) -> list[Verdict]:
    def one(entry: Entry) -> Verdict:
        result = verify_one(store, entry.key, signing_key, foreign_ok=entry.scope == OTHER)
        if on_done is not None:
            on_done()
        return result

    with ThreadPoolExecutor(WORKERS) as pool:
        return list(pool.map(one, list(entries)))


# -- gc ---------------------------------------------------------------------------------------
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """``"7d"`` → seconds. Units: s, m, h, d, w (a bare number is seconds)."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(
            f"{text!r} is not a duration; write a number and a unit: 30s, 15m, 12h, 7d or 2w"
        )
    return float(match.group(1)) * _UNIT[match.group(2).lower()]


def gc_candidates(
    entries: list[Entry], older_than: float | None, keep_last: int | None, now: float
) -> list[Entry]:
    """Records to delete: in groups (namespace, scope, owner), a group goes when its newest record
    is older than ``older_than``, except the ``keep_last`` newest groups of each namespace and
    scope (undated groups do not count). Groups are deleted whole, so a correlation is never left
    half-resumable. Keys not laid out by ckpt (scope ``other``) are never candidates. Records with
    no known time are kept."""
    groups: dict[tuple[str, str, str], list[Entry]] = {}
    for entry in entries:
        if entry.scope != OTHER:
            groups.setdefault((entry.namespace, entry.scope, entry.owner), []).append(entry)
    newest: dict[tuple[str, str, str], float | None] = {}
    for group, members in groups.items():
        times = [m.created for m in members]
        newest[group] = None if any(t is None for t in times) else max(t for t in times if t)
    protected: set[tuple[str, str, str]] = set()
    if keep_last is not None:
        by_kind: dict[tuple[str, str], list[tuple[str, str, str]]] = {}
        for group in groups:
            if newest[group] is not None:  # undated groups are kept anyway; they do not count
                by_kind.setdefault(group[:2], []).append(group)
        for members_ in by_kind.values():
            members_.sort(key=lambda g: newest[g] or 0.0, reverse=True)
            protected.update(members_[:keep_last])
    out: list[Entry] = []
    for group, members in groups.items():
        stamp = newest[group]
        if group in protected or stamp is None:
            continue
        if older_than is not None and now - stamp < older_than:
            continue
        out.extend(members)
    return sorted(out, key=lambda e: e.key)


# -- stats ------------------------------------------------------------------------------------
def stats(entries: list[Entry]) -> list[dict[str, Any]]:
    """Rows of (namespace, scope): records, bytes, distinct owners (runs or correlations)."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for e in entries:
        row = rows.setdefault(
            (e.namespace, e.scope),
            {"namespace": e.namespace, "scope": e.scope, "records": 0, "bytes": 0, "owners": set()},
        )
        row["records"] += 1
        row["bytes"] += e.size
        if e.scope != OTHER:
            row["owners"].add(e.owner)
    out = []
    for _, row in sorted(rows.items()):
        row["owners"] = len(row["owners"])
        out.append(row)
    return out


# -- options ----------------------------------------------------------------------------------
def _value(text: str) -> Any:
    """``--option`` values are JSON when they parse (numbers, true/false, objects), else str."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_options(pairs: Iterable[str], environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Storage options from ``$CKPT_STORAGE_OPTIONS`` (a JSON object) overlaid by ``k=v`` pairs.

    A dotted name nests: ``client_kwargs.region_name=eu-west-1`` gives
    ``{"client_kwargs": {"region_name": "eu-west-1"}}``.
    """
    env = os.environ if environ is None else environ
    options: dict[str, Any] = {}
    raw = env.get(OPTIONS_ENV)
    if raw:
        try:
            loaded = json.loads(raw)
        except ValueError as exc:
            raise StoreConfigError(f"${OPTIONS_ENV} is not valid JSON: {exc.args[0]}") from None
        if not isinstance(loaded, dict):
            raise StoreConfigError(f'${OPTIONS_ENV} must be a JSON object like {{"key": "v"}}')
        options.update(loaded)
    for number, pair in enumerate(pairs, 1):
        name, sep, text = pair.partition("=")
        if not sep or not name:
            # Never echo the argument: it may be a secret typed without its name.
            raise StoreConfigError(
                f"--option number {number} is not NAME=VALUE (e.g. --option "
                "endpoint_url=http://localhost:9000); its text is not shown in case it is a secret"
            )
        target = options
        *parents, leaf = name.split(".")
        for parent in parents:
            nested = target.get(parent)
            if not isinstance(nested, dict):
                nested = target[parent] = {}
            target = nested
        target[leaf] = _value(text)
    return options


def secret_values(url: str, options: Mapping[str, Any]) -> list[str]:
    """Strings that must never be printed: the URL's password and secret-named option values."""
    from ..redact import is_secret_name

    found: list[str] = []
    if "://" in url:
        rest = url.split("://", 1)[1]
        userinfo = rest.rpartition("@")[0]
        if ":" in userinfo:
            found.append(userinfo.split(":", 1)[1])

    def walk(mapping: Mapping[str, Any]) -> None:
        for name, value in mapping.items():
            if isinstance(value, Mapping):
                walk(value)
            elif is_secret_name(str(name)) and value not in (None, ""):
                found.append(str(value))

    walk(options)
    return sorted({s for s in found if len(s) >= 3}, key=len, reverse=True)


def open_cli_store(url: str, options: Mapping[str, Any]) -> Store:
    from ..stores.registry import open_store

    try:
        return open_store(url, **options)
    except CheckpointError:
        raise
    except TypeError as exc:  # an option the store does not take
        raise StoreConfigError(f"bad storage option: {exc}") from None
