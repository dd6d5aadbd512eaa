"""``RedisStore``: records in Redis, with TTL, chunked large values and escaped ``SCAN`` patterns.

URLs are redis-py's, plus three ckpt options in the query string::

    redis://[[username]:password@]host[:port][/db][?prefix=ckpt&ttl=86400&chunk_size=4194304]
    rediss://...                        TLS (ssl_cert_reqs=, ssl_ca_certs= ... as in redis-py)
    unix:///run/redis.sock?db=0&password=...

Layout. Each record lives at ``<prefix>:<key>`` (``prefix`` defaults to ``ckpt``):

- A record of at most ``chunk_size`` bytes is a plain string written by *one* command,
  ``SET key value [PX ttl] GET``, and read by one ``GET`` (a lookup of several keys, RUN scope
  then CORRELATION, pipelines one ``GET`` per key): a small save or load is one round trip, and
  the TTL is part of the write itself.
- A larger record is written as chunks ``<prefix>:<key>\\0<gen>\\0<i>`` under a fresh generation
  id, each staged with a short safety TTL, and then published by one ``MULTI``/``EXEC`` that
  replaces the record key with a small hash manifest ``{gen, n, size}`` and gives every chunk the
  record's final TTL (or none). Readers read the manifest, then the chunks; chunks are never
  rewritten in place, so a reader sees one generation or another, never a mix. When an overwrite
  deletes the chunks a reader is in the middle of, the reader starts again from the manifest.
  Store keys never contain NUL (:func:`~ckpt_core.stores.base.validate_key`), so chunk keys cannot
  collide with any record key.

A writer killed before publishing leaves only staged chunks, which expire on their own; nothing is
visible. ``delete_prefix`` and ``list`` use ``SCAN MATCH`` with the store prefix and the key prefix
glob-escaped, so deleting run ``a`` never matches run ``a*`` or ``a:b``.

Sync and async share one copy of the logic: each operation is a generator *plan* that yields
batches of raw Redis commands and receives their results; :meth:`RedisStore._run` drives it on
the sync pool's connections (one packed write per batch, ``MULTI``/``EXEC`` through redis-py's
pipeline) and :meth:`RedisStore._arun` with a ``redis.asyncio.Redis`` client. Each store
holds one connection pool per flavour (the async one per event loop), never a client per call.
Connection errors are retried by redis-py with a short exponential backoff, then reported as
:class:`~ckpt_core.errors.StoreUnavailable`; refused authentication and bad databases are
:class:`~ckpt_core.errors.StoreConfigError`. Messages name the URL with the password masked.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import uuid
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import redis
import redis.backoff
import redis.retry

from ..errors import CheckpointCorrupted, CheckpointError, StoreConfigError, StoreUnavailable
from ..keys import escape_glob
from ..lease import Claim, Held, LeaseBackend
from ..redact import is_secret_name, keep_slashes, redact_text, redact_url
from ..serde.base import Buffer
from .base import (
    Data,
    ObjectInfo,
    Store,
    data_size,
    iter_chunks,
    join_chunks,
    validate_key,
    validate_prefix,
)

T = TypeVar("T")

DEFAULT_PREFIX = "ckpt"
#: Records above this many bytes are chunked; also the size of each chunk.
DEFAULT_CHUNK_SIZE = 4 << 20
#: Staged chunks expire after this long unless a manifest publishes them first, so a writer
#: killed mid-upload leaks nothing for long.
STAGING_TTL_MS = 15 * 60 * 1000
#: Chunk bytes sent or received per round trip (bounds the memory of a chunked put/get).
PIPELINE_BYTES = 4 << 20
#: Attempts of a chunked write whose staged chunks a concurrent delete removed.
_PUBLISH_ATTEMPTS = 10
#: How often a reader restarts from the manifest when overwrites keep replacing the chunks.
MAX_READ_ATTEMPTS = 20
#: redis-py retries connection errors this many times, with exponential backoff and jitter.
RETRIES = 3
_SCAN_COUNT = 1000
_SEP = b"\x00"
#: Defaults for the connection pool; the URL's query string and explicit options override them.
_POOL_DEFAULTS: dict[str, Any] = {"socket_connect_timeout": 2.0, "socket_timeout": 10.0}
_OWN_QUERY_OPTIONS = ("prefix", "ttl", "chunk_size")


# -- commands and plans (pure: no IO) ----------------------------------------------------------


class _Cmd(NamedTuple):
    """One Redis command as it goes on the wire (``("SET", key, value, "PX", 5000, "GET")``),
    with the options redis-py's reply parsing takes (``{"get": True}``: the reply of
    ``SET ... GET`` is the old value, not ``OK``). Raw commands rather than redis-py method
    calls, so the sync driver can send them without building a ``Pipeline`` per operation."""

    args: tuple[Any, ...]
    options: dict[str, Any]


def _cmd(*args: Any, **options: Any) -> _Cmd:
    return _Cmd(args, options)


class _Batch(NamedTuple):
    """Commands sent in one round trip; ``transaction`` wraps them in ``MULTI``/``EXEC``.

    The results come back as a list, one per command, with Redis error replies (``WRONGTYPE``...)
    as exception instances rather than raised, so a plan can look at them. (Named tuples, like
    :class:`_Cmd`: every save and load builds them, and a frozen dataclass costs several times
    as much to build.)
    """

    commands: tuple[_Cmd, ...]
    transaction: bool = False


_Plan = Generator[_Batch, list[Any], T]


#: Batches whose arguments add up to at most this many bytes are packed by :func:`_pack_small`;
#: larger ones (chunks) go to redis-py's packer, which sends large values without copying them.
_SMALL_BATCH = 16 << 10


def _pack_small(commands: Sequence[_Cmd]) -> bytes | None:
    """The wire form of a small batch as one ``bytes``, or ``None`` for redis-py's packer (a
    large batch, or an argument that is not ``bytes``, an ASCII ``str`` or an ``int``).

    A request is an array of bulk strings, the same in RESP2 and RESP3; redis-py's general
    packer costs about a microsecond per command more, a few percent of a small save or load.
    """
    out: list[bytes] = []
    size = 0
    for args, _options in commands:
        out.append(b"*%d\r\n" % len(args))
        for arg in args:
            kind = type(arg)
            if kind is str and arg.isascii():
                arg = arg.encode()
            elif kind is int:
                arg = b"%d" % arg
            elif kind is not bytes:
                return None
            size += len(arg)
            if size > _SMALL_BATCH:
                return None
            out.append(b"$%d\r\n%b\r\n" % (len(arg), arg))
    return b"".join(out)


def _aborted(batch: _Batch, exc: redis.ResponseError) -> list[Any]:
    """The results of a transaction the server refused as a whole (``EXECABORT``, or ``EXEC``
    refused when out of memory): no command ran, and each one's result is the error, so the plan
    sees it (and can clean up) instead of the driver raising past it."""
    return [exc] * len(batch.commands)


def _stored_size(length: Any, manifest_size: Any) -> int:
    """A record's size from ``STRLEN`` (plain) or its manifest's ``size`` (chunked). A key of
    another type, or a manifest whose size is no count, reports 0 here: listing and lookups keep
    working, and loading it reports the corruption."""
    if not _is_wrongtype(length):
        return int(_ok(length))
    if _is_wrongtype(manifest_size) or isinstance(manifest_size, BaseException):
        return 0
    try:
        size = int(manifest_size or 0)
    except (TypeError, ValueError):
        return 0
    return max(size, 0)


def _is_wrongtype(result: Any) -> bool:
    return isinstance(result, redis.ResponseError) and str(result).startswith("WRONGTYPE")


def _first_found(replies: Sequence[Any]) -> int | None:
    """The index of the first reply that is not nil (a key that exists), or ``None``."""
    for index, reply in enumerate(replies):
        if reply is not None:
            return index
    return None


def _ok(result: Any) -> Any:
    """A command's result, raising it if it is an error reply."""
    if isinstance(result, BaseException):
        raise result
    return result


@dataclass
class _Staging:
    """How far a chunked save got: chunks staged under ``gen``, manifest published or not."""

    gen: bytes
    count: int = 0
    published: bool = False


@dataclass(frozen=True)
class _Manifest:
    gen: bytes
    n: int
    size: int


_RETRY = object()


def _chunks(data: Data, size: int) -> Iterator[Buffer]:
    """``data`` in chunks of at most ``size`` bytes, each never empty, copying as little as
    possible: a piece of ``size`` bytes or more goes out as zero-copy views of it, and only runs
    of smaller pieces are joined (into at most ``size`` bytes, so memory stays within a chunk).

    Chunk sizes vary (the record's small head and trailer travel on their own): a reader adds up
    the chunks' lengths, it never assumes a fixed size. A record's payload arrives in views of
    ``envelope.PLAIN_SLICE`` bytes, so with the default chunk size nothing is copied.
    """
    pending: list[memoryview] = []
    filled = 0
    for buf in iter_chunks(data):
        view = memoryview(buf).cast("B")
        while view.nbytes:
            if filled + view.nbytes > size and pending:
                yield pending[0] if len(pending) == 1 else b"".join(pending)
                pending, filled = [], 0
            if view.nbytes >= size:
                yield view[:size]
                view = view[size:]
                continue
            pending.append(view)
            filled += view.nbytes
            view = view[:0]
    if pending:
        yield pending[0] if len(pending) == 1 else b"".join(pending)


# -- the store ---------------------------------------------------------------------------------


class RedisStore(Store):
    """A store on one Redis database.

    Args:
        url: ``redis://``, ``rediss://`` or ``unix://`` URL; the db number, username and password
            come from it, as in redis-py. The query may also set ``prefix``, ``ttl`` and
            ``chunk_size`` (explicit arguments win).
        ttl: seconds every record lives (``None``: forever). Set in the same command as the
            write, so a record is never visible without its expiry.
        prefix: namespace of every Redis key this store touches (default ``"ckpt"``), so several
            applications or test runs can share one database.
        chunk_size: records larger than this are written as chunks of this size (default 4 MiB).
        **redis_options: passed to ``redis.ConnectionPool.from_url`` (``socket_timeout``,
            ``ssl_ca_certs``, ``max_connections``, ``password``...).
    """

    capabilities = frozenset({"atomic", "multiprocess", "streaming", "ttl"})

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        ttl: float | None = None,
        prefix: str | None = None,
        chunk_size: int | None = None,
        **redis_options: Any,
    ) -> None:
        self.url = keep_slashes(url, redact_url(url))
        try:
            parts = urlsplit(url)
        except ValueError as exc:
            raise StoreConfigError(f"cannot parse the Redis URL {self.url}: {exc}") from None
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise StoreConfigError(
                f"{self.url} is not a Redis URL: use redis://host:6379/0, rediss://... or "
                "unix:///path/to/redis.sock"
            )
        query = parse_qsl(parts.query, keep_blank_values=True)
        own = {k: v for k, v in query if k in _OWN_QUERY_OPTIONS}
        rest = [(k, v) for k, v in query if k not in _OWN_QUERY_OPTIONS]
        self._client_url = keep_slashes(url, urlunsplit(parts._replace(query=urlencode(rest))))

        self.prefix = own.get("prefix", DEFAULT_PREFIX) if prefix is None else prefix
        if not isinstance(self.prefix, str) or "\x00" in self.prefix:
            raise StoreConfigError(f"prefix must be a str without NUL, got {self.prefix!r}")
        self._ns = (self.prefix + ":").encode() if self.prefix else b""
        self.ttl = self._check_ttl(own.get("ttl") if ttl is None else ttl)
        self._ttl_ms = None if self.ttl is None else max(1, round(self.ttl * 1000))
        #: ``PX <ms>`` for every record write, or nothing.
        self._ttl_args: tuple[Any, ...] = () if self._ttl_ms is None else ("PX", self._ttl_ms)
        self.chunk_size = self._check_chunk_size(
            own.get("chunk_size") if chunk_size is None else chunk_size
        )

        self._secrets = self._collect_secrets(parts.password, redis_options)
        self._options = {**_POOL_DEFAULTS, **redis_options}
        try:
            self._pool: Any = redis.ConnectionPool.from_url(
                self._client_url, retry=self._sync_retry(), **self._options
            )
        except (TypeError, ValueError) as exc:
            raise StoreConfigError(f"bad Redis URL or options for {self.url}: {exc}") from None
        self._client: Any = redis.Redis(connection_pool=self._pool)
        #: The client's reply parsers by command name (what its ``parse_response`` applies), as
        #: a plain dict: its own case-insensitive one upper-cases the name on every lookup.
        self._callbacks: dict[str, Any] = dict(self._client.response_callbacks)
        self._aclients: dict[asyncio.AbstractEventLoop, Any] = {}

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisStore:
        """What :func:`~ckpt_core.open_store` calls for ``redis://``, ``rediss://``, ``unix://``."""
        return cls(url, **options)

    # -- configuration helpers ---------------------------------------------------------------
    def _check_ttl(self, value: Any) -> float | None:
        if value is None or value == "":
            return None
        try:
            ttl = float(value)
        except (TypeError, ValueError):
            ttl = -1.0
        if not ttl > 0 or ttl == float("inf"):
            raise StoreConfigError(
                f"ttl for {self.url} must be a positive number of seconds (or None for no "
                f"expiry), got {value!r}"
            )
        return ttl

    def _check_chunk_size(self, value: Any) -> int:
        if value is None or value == "":
            return DEFAULT_CHUNK_SIZE
        try:
            size = int(value)
        except (TypeError, ValueError):
            size = 0
        if size < 1:
            raise StoreConfigError(
                f"chunk_size for {self.url} must be a positive number of bytes, got {value!r}"
            )
        return size

    @staticmethod
    def _collect_secrets(url_password: str | None, options: dict[str, Any]) -> list[str]:
        found = [unquote(url_password)] if url_password else []
        for name, value in options.items():
            if is_secret_name(name) and isinstance(value, str) and value:
                found.append(value)
        return [s for s in found if len(s) >= 3]

    @staticmethod
    def _backoff() -> Any:
        return redis.backoff.ExponentialWithJitterBackoff(cap=1.0, base=0.05)

    def _sync_retry(self) -> Any:
        return redis.retry.Retry(self._backoff(), RETRIES)

    def _async_client(self) -> Any:
        import redis.asyncio
        import redis.asyncio.retry

        loop = asyncio.get_running_loop()
        client = self._aclients.get(loop)
        if client is None:
            # Pools of loops that have ended cannot be used (or awaited) any more: drop them.
            for old in [old for old in self._aclients if old.is_closed()]:
                del self._aclients[old]
            # A pool is bound to the loop that created it; never reuse one across loops.
            pool = redis.asyncio.ConnectionPool.from_url(
                self._client_url,
                retry=redis.asyncio.retry.Retry(self._backoff(), RETRIES),
                **self._options,
            )
            client = self._aclients[loop] = redis.asyncio.Redis(connection_pool=pool)
        return client

    # -- keys ----------------------------------------------------------------------------------
    def _rkey(self, key: str) -> bytes:
        return self._ns + validate_key(key).encode("utf-8", "surrogatepass")

    def _key(self, rkey: bytes) -> str:
        return rkey[len(self._ns) :].decode("utf-8", "surrogatepass")

    def _pattern(self, prefix: str) -> bytes:
        validate_prefix(prefix)
        ns = escape_glob(self.prefix + ":") if self.prefix else ""
        return (ns + escape_glob(prefix)).encode("utf-8", "surrogatepass") + b"*"

    @staticmethod
    def _chunk_key(rkey: bytes, gen: bytes, index: int) -> bytes:
        return rkey + _SEP + gen + _SEP + str(index).encode()

    def _chunk_keys(self, rkey: bytes, manifest: _Manifest) -> list[bytes]:
        return [self._chunk_key(rkey, manifest.gen, i) for i in range(manifest.n)]

    def _manifest(self, raw: Any, rkey: bytes) -> _Manifest | None:
        """Parse an ``HGETALL`` reply: ``None`` for no hash, the manifest, or corrupted."""
        if not raw or isinstance(raw, BaseException):
            return None
        try:
            gen = raw[b"gen"]
            n, size = int(raw[b"n"]), int(raw[b"size"])
            # Every chunk holds at least one byte (only records larger than a chunk are
            # chunked), so n <= size: a manifest claiming 10**9 chunks of a 10-byte record, or
            # any chunks of an empty one, was not written by ckpt.
            if not gen or not gen.isalnum() or not 0 < n <= size or len(gen) > 64:
                raise ValueError(raw)
        except (KeyError, ValueError, TypeError):
            key = self._key(rkey)
            raise CheckpointCorrupted(
                f"Redis key {rkey!r} on {self.url} holds a hash that is not a ckpt manifest; "
                "delete it (ckpt rm) and let the step recompute",
                key=key,
            ) from None
        return _Manifest(bytes(gen), n, size)

    # -- plans ---------------------------------------------------------------------------------
    def _put_plan(self, key: str, data: Data) -> _Plan[None]:
        rkey = self._rkey(key)
        ttl = self._ttl_args
        if data_size(data) <= self.chunk_size:
            value = join_chunks(data)
            # One command: the write, its TTL, and the old value so a replaced chunked record's
            # chunks can be dropped. SET ... GET refuses to replace a hash (WRONGTYPE).
            (old,) = yield _Batch((_cmd("SET", rkey, value, *ttl, "GET", get=True),))
            if not _is_wrongtype(old):
                _ok(old)
                return
            replaced = yield _Batch(
                (
                    self._expire_old_chunks(rkey),
                    _cmd("HGETALL", rkey),
                    _cmd("DEL", rkey),
                    _cmd("SET", rkey, value, *ttl),
                ),
                transaction=True,
            )
            for result in (replaced[0], *replaced[2:]):
                _ok(result)
            yield from self._drop_chunks(rkey, self._manifest(replaced[1], rkey), None)
            return
        # A concurrent prefix delete (cleanup of this run or correlation) can unlink the staged
        # chunks before they are published: stage a new generation, so the write lands after
        # the delete instead of failing.
        for _attempt in range(_PUBLISH_ATTEMPTS):
            if (yield from self._put_chunked_plan(key, rkey, data)):
                return
        raise StoreUnavailable(
            f"writing {key!r} on {self.url} failed: its chunks disappeared before the record was "
            f"published, {_PUBLISH_ATTEMPTS} times (deleted concurrently, evicted under "
            "maxmemory, or the upload took longer than the 15 min staging TTL). The key holds "
            "no record, never a partial one; retry the save"
        )

    def _put_chunked_plan(self, key: str, rkey: bytes, data: Data) -> _Plan[bool]:
        """Stage the chunks under a new generation and publish them; ``False`` (nothing
        published, nothing left behind) if some chunk was gone when the manifest went in."""
        staging = _Staging(uuid.uuid4().hex[:16].encode())
        try:
            return (yield from self._stage_and_publish(key, rkey, data, staging))
        except redis.ResponseError:
            # The server refused a chunk or the publish (out of memory, most often): unless the
            # manifest went in, remove what this save staged now rather than leave it to the
            # staging TTL. (A lost connection or a dying writer leaves them to the TTL.)
            if not staging.published and staging.count:
                keys = [self._chunk_key(rkey, staging.gen, i) for i in range(staging.count)]
                for start in range(0, len(keys), _SCAN_COUNT):
                    yield _Batch((_cmd("UNLINK", *keys[start : start + _SCAN_COUNT]),))
            raise

    def _stage_and_publish(
        self, key: str, rkey: bytes, data: Data, staging: _Staging
    ) -> _Plan[bool]:
        """Stage the chunks under ``staging.gen``, then publish the manifest (``False`` if a
        chunk was gone by then: nothing is published)."""
        gen = staging.gen
        per_batch = max(1, PIPELINE_BYTES // self.chunk_size)
        staged: list[_Cmd] = []
        count = written = 0
        for piece in _chunks(data, self.chunk_size):
            staged.append(
                _cmd("SET", self._chunk_key(rkey, gen, count), piece, "PX", STAGING_TTL_MS)
            )
            count += 1
            staging.count = count
            written += memoryview(piece).nbytes
            if len(staged) >= per_batch:
                for result in (yield _Batch(tuple(staged))):
                    _ok(result)
                staged = []
        if staged:
            for result in (yield _Batch(tuple(staged))):
                _ok(result)
        commit = [
            self._expire_old_chunks(rkey),
            _cmd("HGETALL", rkey),
            _cmd("DEL", rkey),
            _cmd("HSET", rkey, b"gen", gen, b"n", count, b"size", written),
        ]
        if self._ttl_ms:
            commit.append(_cmd("PEXPIRE", rkey, self._ttl_ms))
        for i in range(count):
            ck = self._chunk_key(rkey, gen, i)
            commit.append(
                _cmd("PEXPIRE", ck, self._ttl_ms) if self._ttl_ms else _cmd("PERSIST", ck)
            )
        results = yield _Batch(tuple(commit), transaction=True)
        staging.published = not isinstance(results[3], BaseException)
        for result in (results[0], *results[2:]):
            _ok(result)
        old = results[1] if not _is_wrongtype(results[1]) else None
        yield from self._drop_chunks(rkey, self._manifest(old, rkey), gen)
        if count and not all(results[-count:]):
            # A chunk was gone before the manifest went in: a concurrent delete_prefix, an
            # upload slower than the staging TTL, or eviction under maxmemory.
            (_,) = yield _Batch((_cmd("EVAL", _DELETE_IF_GEN, 1, rkey, gen),))
            yield from self._drop_chunks(rkey, _Manifest(gen, count, written), None)
            return False
        return True

    @staticmethod
    def _expire_old_chunks(rkey: bytes) -> _Cmd:
        return _cmd("EVAL", _EXPIRE_OLD_CHUNKS, 1, rkey, STAGING_TTL_MS, _SEP)

    def _drop_chunks(
        self, rkey: bytes, manifest: _Manifest | None, keep_gen: bytes | None
    ) -> _Plan[None]:
        if manifest is None or manifest.gen == keep_gen or manifest.n == 0:
            return
        keys = self._chunk_keys(rkey, manifest)
        for start in range(0, len(keys), _SCAN_COUNT):
            (result,) = yield _Batch((_cmd("UNLINK", *keys[start : start + _SCAN_COUNT]),))
            _ok(result)

    def _get_plan(self, key: str, first: Any = None, *, have_first: bool = False) -> _Plan[Any]:
        rkey = self._rkey(key)
        for _attempt in range(MAX_READ_ATTEMPTS):
            if have_first:
                result, have_first = first, False
            else:
                (result,) = yield _Batch((_cmd("GET", rkey),))
            if result is None:
                return None
            if not _is_wrongtype(result):
                return _ok(result)
            value = yield from self._read_chunked(rkey)
            if value is not _RETRY:
                return value
        raise StoreUnavailable(
            f"reading {key!r} on {self.url} failed: the record was overwritten "
            f"{MAX_READ_ATTEMPTS} times while it was being read; retry later"
        )

    def _read_chunked(self, rkey: bytes) -> _Plan[Any]:
        """The chunked record at ``rkey``; ``None`` if gone, ``_RETRY`` if it changed meanwhile.

        The manifest is checked against the chunks before any memory is taken: their lengths
        (``STRLEN``, a thousand per round trip) must add up to its ``size``, so a hash declaring
        10 GB over a few small chunks, or a billion chunks that do not exist, costs a round trip
        and an error, never a 10 GB buffer. Reading then takes one buffer of the record's size.
        """
        (raw,) = yield _Batch((_cmd("HGETALL", rkey),))
        if _is_wrongtype(raw):
            (kind,) = yield _Batch((_cmd("TYPE", rkey),))
            kind = _ok(kind)
            kind = kind.decode() if isinstance(kind, bytes) else str(kind)
            # "hash": replaced by a small record and then by a new chunked one since our GET.
            if kind not in ("string", "none", "hash"):
                raise CheckpointCorrupted(
                    f"Redis key {rkey!r} on {self.url} holds a {kind}, not a ckpt record; "
                    "delete it (ckpt rm) and let the step recompute",
                    key=self._key(rkey),
                )
            return _RETRY  # the record was replaced since our GET: read it again
        manifest = self._manifest(_ok(raw), rkey)
        if manifest is None:
            return None
        total = 0
        for start in range(0, manifest.n, _SCAN_COUNT):
            indexes = range(start, min(manifest.n, start + _SCAN_COUNT))
            lengths = yield _Batch(
                tuple(_cmd("STRLEN", self._chunk_key(rkey, manifest.gen, i)) for i in indexes)
            )
            if any(_is_wrongtype(n) or not _ok(n) for n in lengths):  # chunks are never empty
                return (yield from self._chunks_gone(rkey, manifest))
            total += sum(int(n) for n in lengths)
            if total > manifest.size:
                break
        if total != manifest.size:
            raise self._size_mismatch(rkey, manifest, f"at least {total}" if total else "0")
        buf = bytearray(manifest.size)
        offset = 0
        per_batch = max(1, PIPELINE_BYTES // max(1, manifest.size // manifest.n))
        for start in range(0, manifest.n, per_batch):
            indexes = range(start, min(manifest.n, start + per_batch))
            batch = tuple(_cmd("GET", self._chunk_key(rkey, manifest.gen, i)) for i in indexes)
            for piece in (yield _Batch(batch)):
                if piece is None or _is_wrongtype(piece):
                    return (yield from self._chunks_gone(rkey, manifest))
                piece = _ok(piece)
                end = offset + len(piece)
                if end > manifest.size:  # a chunk grew since STRLEN: not written by ckpt
                    raise self._size_mismatch(rkey, manifest, f"more than {offset}")
                buf[offset:end] = piece
                offset = end
        if offset != manifest.size:
            raise self._size_mismatch(rkey, manifest, str(offset))
        return buf

    def _chunks_gone(self, rkey: bytes, manifest: _Manifest) -> _Plan[Any]:
        """Chunks went away under a reader: overwritten (``_RETRY`` from the new manifest), or
        lost (expired, evicted, deleted): the record is gone (``None``)."""
        (again,) = yield _Batch((_cmd("HGETALL", rkey),))
        current = None if _is_wrongtype(again) else self._manifest(_ok(again), rkey)
        if _is_wrongtype(again) or (current is not None and current != manifest):
            return _RETRY
        return None

    def _size_mismatch(self, rkey: bytes, manifest: _Manifest, found: str) -> CheckpointCorrupted:
        key = self._key(rkey)
        return CheckpointCorrupted(
            f"chunked record {key!r} on {self.url} has {found} bytes in its {manifest.n} "
            f"chunks, its manifest says {manifest.size}; delete it and let the step recompute",
            key=key,
        )

    def _get_first_plan(self, keys: Sequence[str]) -> _Plan[tuple[str, Buffer] | None]:
        """The first of ``keys`` holding a record, in one round trip unless it is chunked.

        One ``GET`` per remaining candidate, pipelined: a plain record comes back whole, a
        chunked one (a hash) answers ``WRONGTYPE`` and is read from its manifest. Plain ``GET``s
        cost the server a fraction of a Lua script doing the same, and the client a fraction of
        parsing its reply; the price is that a hit on an early key also brings the later keys'
        small records along (at most one chunk each; the manager asks for two keys, and a node
        saved in both scopes is rare)."""
        rkeys = [self._rkey(k) for k in keys]
        start = 0
        while start < len(rkeys):
            replies = yield _Batch(tuple([_cmd("GET", rkey) for rkey in rkeys[start:]]))
            found = _first_found(replies)
            if found is None:
                return None
            index, reply = start + found, replies[found]
            if not _is_wrongtype(reply):
                return keys[index], _ok(reply)
            value = yield from self._get_plan(keys[index], reply, have_first=True)
            if value is not None:
                return keys[index], value
            start = index + 1  # it vanished meanwhile: go on with the next candidates
        return None

    def _head_plan(self, key: str) -> _Plan[ObjectInfo | None]:
        rkey = self._rkey(key)
        # A plain pipeline, as in list: a server out of memory refuses every MULTI, and a
        # lookup must keep working there (a record replaced meanwhile reports size 0).
        exists, length, size = yield _Batch(
            (_cmd("EXISTS", rkey), _cmd("STRLEN", rkey), _cmd("HGET", rkey, b"size"))
        )
        if not _ok(exists):
            return None
        return ObjectInfo(key, _stored_size(length, size))

    def _delete_plan(self, key: str) -> _Plan[None]:
        rkey = self._rkey(key)
        expired, raw, deleted = yield _Batch(
            (self._expire_old_chunks(rkey), _cmd("HGETALL", rkey), _cmd("DEL", rkey)),
            transaction=True,
        )
        if isinstance(expired, redis.exceptions.OutOfMemoryError):
            # A server out of memory refuses every MULTI, and deleting old checkpoints is how
            # one gets out of that state: the same delete as one script, which it does run.
            (fields,) = yield _Batch((_cmd("EVAL", _DELETE_RECORD, 1, rkey, STAGING_TTL_MS, _SEP),))
            fields = _ok(fields) or []
            expired = deleted = 0
            raw = dict(zip(fields[::2], fields[1::2], strict=True))
        _ok(expired)
        _ok(deleted)
        if not _is_wrongtype(raw):
            yield from self._drop_chunks(rkey, self._manifest(_ok(raw), rkey), None)

    def _scan_plan(self, prefix: str) -> _Plan[builtins.list[bytes]]:
        """Every Redis key below ``prefix`` (records and chunks), deduplicated."""
        pattern = self._pattern(prefix)
        found: dict[bytes, None] = {}
        cursor: Any = 0
        while True:
            (reply,) = yield _Batch((_cmd("SCAN", cursor, "MATCH", pattern, "COUNT", _SCAN_COUNT),))
            cursor, page = _ok(reply)
            found.update(dict.fromkeys(page))
            if int(cursor) == 0:
                return list(found)

    def _delete_prefix_plan(self, prefix: str) -> _Plan[int]:
        rkeys = yield from self._scan_plan(prefix)
        records = sum(1 for rk in rkeys if _SEP not in rk[len(self._ns) :])
        for start in range(0, len(rkeys), _SCAN_COUNT):
            (result,) = yield _Batch((_cmd("UNLINK", *rkeys[start : start + _SCAN_COUNT]),))
            _ok(result)
        return records

    def _list_plan(self, prefix: str) -> _Plan[builtins.list[ObjectInfo]]:
        rkeys = [
            rk for rk in (yield from self._scan_plan(prefix)) if _SEP not in rk[len(self._ns) :]
        ]
        out: list[ObjectInfo] = []
        for start in range(0, len(rkeys), _SCAN_COUNT):
            page = rkeys[start : start + _SCAN_COUNT]
            # One script per page returns every size: one command, not three per key.
            (sizes,) = yield _Batch((_cmd("EVAL", _SIZES, len(page), *page),))
            for rk, size in zip(page, _ok(sizes), strict=True):
                if size >= 0:  # -1: deleted since the scan
                    out.append(ObjectInfo(self._key(rk), size))
        return out

    # -- drivers -------------------------------------------------------------------------------
    def _run(self, plan: _Plan[T], action: str, key: str) -> T:
        try:
            results: list[Any] | None = None
            while True:
                try:
                    batch = plan.send(results) if results is not None else next(plan)
                except StopIteration as done:
                    return done.value  # type: ignore[no-any-return]
                results = self._execute(batch)
        except Exception as exc:
            translated = self._translate(exc, action, key)
            if translated is None:
                raise
            raise translated from None

    def _execute(self, batch: _Batch) -> list[Any]:
        if not batch.transaction:
            return self._pipelined(batch.commands)
        with self._client.pipeline(transaction=True) as pipe:
            for args, options in batch.commands:
                pipe.execute_command(*args, **options)
            try:
                return list(pipe.execute(raise_on_error=False))
            except redis.ResponseError as exc:
                return _aborted(batch, exc)

    def _pipelined(self, commands: Sequence[_Cmd]) -> list[Any]:
        """Send ``commands`` in one write on a pooled connection and read every reply.

        What redis-py's non-transactional ``Pipeline`` does (and ``execute_command`` for one
        command): one packed write, each reply read and parsed by the client's reply callbacks,
        error replies returned in place, connection errors retried by the pool's ``Retry`` after
        a disconnect. Without the ``Pipeline`` object, the method-call layer and their
        bookkeeping: several microseconds of client CPU per round trip, which is a sizeable part
        of a 1 KiB save or load. A connection goes back to the pool only after every reply was
        read (or disconnected)."""
        pool = self._pool
        conn = pool.get_connection()  # no command name: redis-py >= 5.3 (the extra's floor)
        try:
            return conn.retry.call_with_retry(  # type: ignore[no-any-return]
                lambda: self._exchange(conn, commands), lambda _error: conn.disconnect()
            )
        finally:
            pool.release(conn)

    def _exchange(self, conn: Any, commands: Sequence[_Cmd]) -> list[Any]:
        packed = _pack_small(commands)
        if packed is not None:
            conn.send_packed_command([packed])
        else:
            conn.send_packed_command(conn.pack_commands([args for args, _ in commands]))
        callbacks = self._callbacks
        results: list[Any] = []
        try:
            for args, options in commands:
                try:
                    reply = conn.read_response()
                except redis.ResponseError as exc:
                    results.append(exc)
                    continue
                parse = callbacks.get(args[0])
                results.append(reply if parse is None else parse(reply, **options))
        except BaseException:
            conn.disconnect()  # replies left unread: never hand the connection back as it is
            raise
        return results

    async def _arun(self, plan: _Plan[T], action: str, key: str) -> T:
        try:
            client = self._async_client()
            results: list[Any] | None = None
            while True:
                try:
                    batch = plan.send(results) if results is not None else next(plan)
                except StopIteration as done:
                    return done.value  # type: ignore[no-any-return]
                results = await self._aexecute(client, batch)
        except Exception as exc:
            translated = self._translate(exc, action, key)
            if translated is None:
                raise
            raise translated from None

    @staticmethod
    async def _aexecute(client: Any, batch: _Batch) -> list[Any]:
        if len(batch.commands) == 1 and not batch.transaction:
            args, options = batch.commands[0]
            try:
                return [await client.execute_command(*args, **options)]
            except redis.ResponseError as exc:
                return [exc]
        async with client.pipeline(transaction=batch.transaction) as pipe:
            for args, options in batch.commands:
                pipe.execute_command(*args, **options)
            try:
                return list(await pipe.execute(raise_on_error=False))
            except redis.ResponseError as exc:
                return _aborted(batch, exc)

    # -- errors --------------------------------------------------------------------------------
    def _scrub(self, text: str) -> str:
        return redact_text(text, self._secrets)

    def _translate(self, exc: Exception, action: str, key: str) -> CheckpointError | None:
        """The one place Redis exceptions become ckpt errors (messages never hold secrets);
        ``None`` for an exception that is not a Redis one (or already a ckpt error)."""
        if isinstance(exc, CheckpointError):
            return None
        if isinstance(exc, (redis.AuthenticationError, redis.exceptions.AuthorizationError)):
            return StoreConfigError(
                f"{action} {key!r}: Redis at {self.url} refused authentication "
                f"({self._scrub(str(exc))}). Check the username and password in the URL"
            )
        if isinstance(exc, redis.exceptions.NoPermissionError):
            return StoreConfigError(
                f"{action} {key!r}: Redis at {self.url} denied the command "
                f"({self._scrub(str(exc))}). The ACL user needs GET, SET, HSET, HGETALL, DEL, "
                "UNLINK, EXISTS, STRLEN, HGET, PEXPIRE, PERSIST, SCAN, EVAL, MULTI and EXEC on "
                f"keys matching {self.prefix}:*"
            )
        if isinstance(exc, redis.exceptions.ReadOnlyError):
            return StoreConfigError(
                f"{action} {key!r}: Redis at {self.url} is a read-only replica "
                f"({self._scrub(str(exc))}); point ckpt at the primary"
            )
        if isinstance(exc, redis.exceptions.OutOfMemoryError):
            return StoreUnavailable(
                f"{action} {key!r}: Redis at {self.url} is out of memory (used memory is above "
                "its maxmemory and it evicts nothing), so it refuses writes; nothing partial was "
                "left and earlier checkpoints are intact. Raise maxmemory, set a ttl on the "
                "store, or delete old checkpoints (ckpt gc / ckpt rm), then retry"
            )
        if isinstance(exc, redis.ResponseError):
            text = self._scrub(str(exc))
            if "DB index" in text or "invalid DB" in text or "NOAUTH" in text:
                return StoreConfigError(
                    f"{action} {key!r}: Redis at {self.url} rejected the connection settings "
                    f"({text}); check the database number and password in the URL"
                )
            return StoreUnavailable(
                f"{action} {key!r} on {self.url} failed: Redis replied with an error: {text}"
            )
        if isinstance(exc, (redis.ConnectionError, redis.TimeoutError, OSError)):
            return StoreUnavailable(
                f"{action} {key!r}: Redis at {self.url} is unavailable after {RETRIES + 1} "
                f"attempts ({type(exc).__name__}: {self._scrub(str(exc))}). Check that the "
                "server is running and reachable; checkpoints already written are not affected"
            )
        if isinstance(exc, redis.RedisError):
            return StoreUnavailable(
                f"{action} {key!r} on {self.url} failed: {type(exc).__name__}: "
                f"{self._scrub(str(exc))}"
            )
        return None

    # -- sync primitives -----------------------------------------------------------------------
    def put(self, key: str, data: Data) -> None:
        self._run(self._put_plan(key, data), "writing", key)

    def get(self, key: str) -> Buffer | None:
        return self._run(self._get_plan(key), "reading", key)  # type: ignore[no-any-return]

    def get_first(self, keys: Sequence[str]) -> tuple[str, Buffer] | None:
        return self._run(self._get_first_plan(keys), "reading", _first(keys))

    def head(self, key: str) -> ObjectInfo | None:
        return self._run(self._head_plan(key), "checking", key)

    def delete(self, key: str) -> None:
        self._run(self._delete_plan(key), "deleting", key)

    def delete_prefix(self, prefix: str) -> int:
        return self._run(self._delete_prefix_plan(prefix), "deleting", prefix)

    def list(self, prefix: str = "") -> builtins.list[ObjectInfo]:
        return self._run(self._list_plan(prefix), "listing", prefix)

    def close(self) -> None:
        """Disconnect the pools. Async pools of loops that are still running should be closed
        with :meth:`aclose` on their loop; here they are only dropped."""
        with contextlib.suppress(Exception):
            self._pool.disconnect()
        self._aclients.clear()

    # -- async twins ---------------------------------------------------------------------------
    async def aput(self, key: str, data: Data) -> None:
        await self._arun(self._put_plan(key, data), "writing", key)

    async def aget(self, key: str) -> Buffer | None:
        return await self._arun(self._get_plan(key), "reading", key)  # type: ignore[no-any-return]

    async def aget_first(self, keys: Sequence[str]) -> tuple[str, Buffer] | None:
        return await self._arun(self._get_first_plan(keys), "reading", _first(keys))

    async def ahead(self, key: str) -> ObjectInfo | None:
        return await self._arun(self._head_plan(key), "checking", key)

    async def adelete(self, key: str) -> None:
        await self._arun(self._delete_plan(key), "deleting", key)

    async def adelete_prefix(self, prefix: str) -> int:
        return await self._arun(self._delete_prefix_plan(prefix), "deleting", prefix)

    async def alist(self, prefix: str = "") -> builtins.list[ObjectInfo]:
        return await self._arun(self._list_plan(prefix), "listing", prefix)

    async def aclose(self) -> None:
        """Close this loop's async pool, then everything :meth:`close` closes."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # pragma: no cover - aclose is always awaited on a loop
            loop = None
        client = self._aclients.pop(loop, None) if loop is not None else None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.connection_pool.disconnect()
        self.close()

    # -- leases (exclusive=True) ---------------------------------------------------------------
    def lease_backend(self) -> LeaseBackend:
        """``SET NX PX`` leases with compare-and-swap renewal; see :mod:`ckpt_core.lease`."""
        return _RedisLeases(self)


class _RedisLeases(LeaseBackend):
    """A lease is the key ``<prefix>:\\0lease\\0<ns>/<corr>`` holding the holder's record.

    Taken with ``SET key record NX PX ttl`` (one atomic command; the expiry is part of the
    write). Renewed and released by Lua scripts that first compare the stored record with ours,
    so a holder whose lease expired and was taken over can neither extend nor delete the new
    holder's lease. The NUL right after the prefix keeps lease keys out of every record listing
    and scope delete (record keys never start with NUL). Plans run through the store's drivers:
    one copy of the logic for both flavours.
    """

    def __init__(self, store: RedisStore) -> None:
        self.url = store.url
        self._store = store

    def _lkey(self, name: str) -> bytes:
        return self._store._ns + b"\x00lease\x00" + validate_key(name).encode()

    def _acquire_plan(self, name: str, record: bytes, ttl: float) -> _Plan[Claim | Held]:
        lkey, ms = self._lkey(name), max(1, round(ttl * 1000))
        for _ in range(8):
            (taken,) = yield _Batch((_cmd("SET", lkey, record, "PX", ms, "NX"),))
            if _ok(taken):
                return Claim(name, record)
            current, left = yield _Batch((_cmd("GET", lkey), _cmd("PTTL", lkey)), transaction=True)
            current, left = _ok(current), _ok(left)
            if current is None:
                continue  # expired or released since our SET: try again
            if bytes(current) == record:
                return Claim(name, record)  # our SET landed; its retry (lost reply) was refused
            return Held(bytes(current), left / 1000 if left >= 0 else None)
        raise StoreUnavailable(
            f"taking the lease {name!r} on {self.url}: it changed hands 8 times while we "
            "tried; retry"
        )

    def _renew_plan(self, claim: Claim, ttl: float) -> _Plan[Claim | None]:
        ms = max(1, round(ttl * 1000))
        (renewed,) = yield _Batch(
            (_cmd("EVAL", _RENEW_IF_OURS, 1, self._lkey(claim.name), claim.token, ms),)
        )
        return claim if _ok(renewed) == 1 else None

    def _release_plan(self, claim: Claim) -> _Plan[None]:
        (deleted,) = yield _Batch(
            (_cmd("EVAL", _DELETE_IF_OURS, 1, self._lkey(claim.name), claim.token),)
        )
        _ok(deleted)

    def acquire(self, name: str, record: bytes, ttl: float) -> Claim | Held:
        return self._store._run(self._acquire_plan(name, record, ttl), "taking the lease", name)

    def renew(self, claim: Claim, record: bytes, ttl: float) -> Claim | None:
        return self._store._run(self._renew_plan(claim, ttl), "renewing the lease", claim.name)

    def release(self, claim: Claim) -> None:
        self._store._run(self._release_plan(claim), "releasing the lease", claim.name)

    async def aacquire(self, name: str, record: bytes, ttl: float) -> Claim | Held:
        return await self._store._arun(
            self._acquire_plan(name, record, ttl), "taking the lease", name
        )

    async def arenew(self, claim: Claim, record: bytes, ttl: float) -> Claim | None:
        return await self._store._arun(
            self._renew_plan(claim, ttl), "renewing the lease", claim.name
        )

    async def arelease(self, claim: Claim) -> None:
        await self._store._arun(self._release_plan(claim), "releasing the lease", claim.name)


#: Extend a lease only if it still holds our record (so never another holder's lease).
_RENEW_IF_OURS = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

#: Delete a lease only if it still holds our record.
_DELETE_IF_OURS = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def _first(keys: Iterable[str]) -> str:
    for key in keys:
        return key
    return ""


#: Give a manifest's chunks the staging TTL (KEYS[1] the manifest; ARGV[1] the TTL in ms, ARGV[2]
#: the chunk-key separator). Shared by the scripts below.
_EXPIRE_CHUNKS_LUA = """
local gen = redis.call('HGET', KEYS[1], 'gen')
local n = tonumber(redis.call('HGET', KEYS[1], 'n')) or 0
if gen then
  for i = 0, n - 1 do
    redis.call('PEXPIRE', KEYS[1] .. ARGV[2] .. gen .. ARGV[2] .. i, ARGV[1])
  end
end
"""

#: First command of every transaction that replaces or deletes a record: if the key holds a chunk
#: manifest, its chunks get the staging TTL, atomically with the swap. The UNLINK that follows is
#: only the fast path; a writer killed between the two can no longer leak chunks forever.
_EXPIRE_OLD_CHUNKS = f"""
if redis.call('TYPE', KEYS[1]).ok == 'hash' then
{_EXPIRE_CHUNKS_LUA}
end
return 0
"""

#: The size of each record in KEYS: STRLEN of a plain record, the manifest's size of a chunked one
#: (0 if it is no count, as for a key of another type), -1 for a key deleted since the SCAN.
_SIZES = """
local sizes = {}
for i, key in ipairs(KEYS) do
  local kind = redis.call('TYPE', key).ok
  if kind == 'string' then
    sizes[i] = redis.call('STRLEN', key)
  elseif kind == 'hash' then
    local n = tonumber(redis.call('HGET', key, 'size'))
    if n == nil or n ~= n or n < 0 or n > 9007199254740992 then n = 0 end
    sizes[i] = math.floor(n)
  elseif kind == 'none' then
    sizes[i] = -1
  else
    sizes[i] = 0
  end
end
return sizes
"""

#: Delete a manifest only if it still points at the given generation (atomic, server-side).
_DELETE_IF_GEN = """
if redis.call('HGET', KEYS[1], 'gen') == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

#: Delete a record atomically. A chunk manifest's chunks get the staging TTL first (the UNLINK
#: that follows is only the fast path) and its fields are returned; a plain record returns nil.
#: No command here is refused by a server out of memory.
_DELETE_RECORD = f"""
if redis.call('TYPE', KEYS[1]).ok ~= 'hash' then
  redis.call('DEL', KEYS[1])
  return false
end
local fields = redis.call('HGETALL', KEYS[1])
{_EXPIRE_CHUNKS_LUA}
redis.call('DEL', KEYS[1])
return fields
"""
