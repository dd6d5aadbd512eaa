"""``FsspecStore``: local paths and any fsspec URL (``s3://``, ``gs://``, ``az://``, ``memory://``...).

How a record is written depends on what the filesystem can promise:

- Local paths get :class:`~ckpt_core.stores.local.LocalFiles` (temp file, fsync, rename, directory
  fsync).
- S3 (and S3-compatible servers, through s3fs) gets one ``PutObject`` per record, or above
  ``multipart_threshold`` a multipart upload fed part by part from the record's buffers. S3 makes
  an object visible only when ``PutObject`` or ``CompleteMultipartUpload`` succeeds; a failed
  upload is aborted, so nothing partial is ever published. There is no read-modify-write anywhere.
- Other object stores that publish on close (GCS through gcsfs, Azure through adlfs) stream large
  records through the filesystem's own upload file; a failure discards it instead of closing it.
- Every other filesystem (``memory://``, sftp, ...) gets one ``pipe_file`` per record.

The fsspec filesystem is built once per store (and again in a forked child, since fsspec's async
filesystems are not fork-safe). For ``s3://`` we default ``config_kwargs`` to a 3 s connect timeout
and botocore's ``standard`` retry mode with 3 attempts, unless the user or the ``AWS_MAX_ATTEMPTS``
/ ``AWS_RETRY_MODE`` environment chose otherwise: a server that is down fails within seconds.

Backend exceptions are translated in exactly one place, :meth:`FsspecStore._translate`, into
:class:`~ckpt_core.errors.StoreUnavailable` / :class:`~ckpt_core.errors.StoreConfigError`, with the
URL redacted and every credential the store was given masked.
"""

from __future__ import annotations

import contextlib
import email.utils
import errno
import io
import json
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ..errors import CheckpointError, StoreConfigError, StoreUnavailable
from ..lease import LEASE_DIR, BlockingLeaseBackend, Claim, Held, unsupported
from ..redact import is_secret_name, redact_text, redact_url
from ..serde.base import Buffer
from .base import (
    BlockingStore,
    Data,
    ObjectInfo,
    R,
    ReadStream,
    data_size,
    iter_chunks,
    join_chunks,
    validate_key,
    validate_prefix,
)
from .local import LocalFiles, disk_full_advice, is_disk_full

if TYPE_CHECKING:
    from ..lease import LeaseBackend

_LOCAL_PROTOCOLS = {"file", "local"}
_S3_PROTOCOLS = {"s3", "s3a"}
#: Object stores whose upload files publish the object only when closed (and can be discarded).
_PUBLISH_ON_CLOSE = {"gs", "gcs", "az", "abfs", "abfss"}
#: S3 refuses multipart parts under 5 MiB (except the last) and more than 10,000 parts.
S3_MIN_PART = 5 << 20
S3_MAX_PARTS = 10_000
_SMALL_BODY = 1 << 20
#: botocore exceptions that mean "wrong configuration", not "server unavailable".
_CONFIG_ERRORS = {
    "NoCredentialsError",
    "PartialCredentialsError",
    "ParamValidationError",
    "NoRegionError",
    "ProfileNotFound",
    "InvalidS3AddressingStyleError",
    "InvalidConfigError",
}


def _modified(info: Mapping[str, Any]) -> float | None:
    for name in ("mtime", "LastModified", "last_modified", "updated", "created"):
        value = info.get(name)
        if value is None:
            continue
        if hasattr(value, "timestamp"):
            return float(value.timestamp())
        try:
            return float(value)
        except (TypeError, ValueError):
            continue
    return None


def _missing_bucket(exc: BaseException) -> bool:
    """Whether ``exc`` (or its cause) says the bucket does not exist (``NoSuchBucket``)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        response = getattr(current, "response", None)
        if isinstance(response, dict) and response.get("Error", {}).get("Code") == "NoSuchBucket":
            return True
        text = str(current)
        if "NoSuchBucket" in text or "bucket does not exist" in text.lower():
            return True
        current = current.__cause__ or current.__context__
    return False


def _secrets(options: Mapping[str, Any]) -> list[str]:
    """Every credential-looking string value in (nested) storage options."""
    found: list[str] = []
    for name, value in options.items():
        if isinstance(value, Mapping):
            found += _secrets(value)
        elif is_secret_name(str(name)) and isinstance(value, str) and len(value) >= 3:
            found.append(value)
    return found


def _parts(data: Data, size: int) -> Iterator[memoryview]:
    """``data`` as consecutive parts of ``size`` bytes (the last may be shorter), each a view of
    one reusable buffer: a multipart upload holds one part in memory, whatever the record."""
    buf = bytearray(size)
    out = memoryview(buf)
    filled = 0
    for chunk in iter_chunks(data):
        view = memoryview(chunk).cast("B")
        while view.nbytes:
            take = min(size - filled, view.nbytes)
            out[filled : filled + take] = view[:take]
            filled += take
            view = view[take:]
            if filled == size:
                yield out
                filled = 0
    if filled:
        yield out[:filled]


class _PartReader(io.RawIOBase):
    """A seekable file over a memoryview, used as an ``upload_part`` body.

    botocore refuses memoryview bodies, and with a bytes-like one aiohttp copies the part twice
    (a slice, then a join with the headers); a file is sent in small reads instead.
    """

    def __init__(self, view: memoryview) -> None:
        super().__init__()
        self._view = view
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = max(0, min(len(b), self._view.nbytes - self._pos))
        b[:n] = self._view[self._pos : self._pos + n]
        self._pos += n
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._view.nbytes}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def __len__(self) -> int:
        return self._view.nbytes


#: Filesystems inherited from the parent process, kept alive in a forked child (see below).
_FORK_LEFTOVERS: list[Any] = []


def _quarantine_parent_filesystems(inherited: Any) -> None:
    """In a forked child, keep the parent's filesystems alive and disarm their finalizers.

    The child's copy of an async filesystem (s3fs) shares the parent's event-loop epoll instance
    and sockets. If the copy were closed here (a finalizer runs when fsspec's instance cache is
    cleared in the child, or when we drop our reference), its transports would unregister the
    parent's sockets from that shared epoll, and the parent's next request on a pooled
    connection would hang until the read timeout. So nothing inherited is ever closed here.
    """
    pid = os.getpid()
    cache = getattr(type(inherited), "_cache", None)
    stale = [inherited]
    if isinstance(cache, dict):
        stale += [fs for fs in cache.values() if getattr(fs, "_pid", pid) != pid]
    ids = {id(fs) for fs in stale}
    registry = getattr(weakref.finalize, "_registry", {})
    for finalizer in list(registry):
        info = finalizer.peek()
        if info is not None and id(info[0]) in ids:
            finalizer.detach()
    _FORK_LEFTOVERS.extend(stale)


class _RemoteFiles:
    """Primitives over any fsspec filesystem (object stores, memory, ...); raw fsspec errors."""

    def __init__(
        self,
        url: str,
        storage_options: dict[str, Any],
        protocol: str,
        multipart_threshold: int,
        block_size: int,
    ) -> None:
        self._url = url
        self._options = storage_options
        self.protocol = protocol
        self.multipart_threshold = multipart_threshold
        self.block_size = block_size
        self._lock = threading.Lock()
        self._pid = -1
        self._fs: Any = None
        self.root = ""
        self.fs  # noqa: B018 - build now, so bad options fail at open time (no IO happens)

    @property
    def fs(self) -> Any:
        """The filesystem, rebuilt after a fork (fsspec's async loop thread does not survive
        one; Dagster and multiprocessing fork their workers)."""
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    import fsspec.core

                    if self._fs is not None:
                        _quarantine_parent_filesystems(self._fs)
                    fs, root = fsspec.core.url_to_fs(self._url, **self._options)
                    self._fs, self.root = fs, root.rstrip("/")
                    self._pid = os.getpid()
        return self._fs

    @property
    def is_s3(self) -> bool:
        return self.protocol in _S3_PROTOCOLS and hasattr(self.fs, "call_s3")

    def path(self, key: str) -> str:
        return f"{self.root}/{validate_key(key)}" if self.root else validate_key(key)

    def _key(self, path: str) -> str:
        path = self.fs._strip_protocol(path)
        return path[len(self.root) + 1 :] if self.root else path

    def _not_found(self, exc: FileNotFoundError) -> None:
        """A miss is ``None``; a missing bucket is a configuration error, not a miss."""
        if _missing_bucket(exc):
            raise exc

    # -- writes ------------------------------------------------------------------------------
    def put(self, key: str, data: Data) -> None:
        path = self.path(key)
        size = data_size(data)
        if self.is_s3:
            if size <= self.multipart_threshold:
                self._put_s3_single(path, data, size)
            else:
                self._put_s3_multipart(path, data, size)
        elif size <= self.multipart_threshold:
            self.fs.pipe_file(path, join_chunks(data))
        elif self.protocol in _PUBLISH_ON_CLOSE:
            self._put_streamed(path, data)
        else:
            self.fs.pipe_file(path, join_chunks(data))

    def _put_s3_single(self, path: str, data: Data, size: int) -> None:
        """One ``PutObject``; the record is joined once (no copy if it is already ``bytes``)."""
        fs = self.fs
        bucket, key, _version = fs.split_path(path)
        body = join_chunks(data)
        # Past a small size, a file body keeps aiohttp from copying the record twice more.
        fs.call_s3(
            "put_object",
            Bucket=bucket,
            Key=key,
            Body=body if size <= _SMALL_BODY else _PartReader(memoryview(body)),
        )
        fs.invalidate_cache(path)

    def _put_s3_multipart(self, path: str, data: Data, size: int) -> None:
        fs = self.fs
        bucket, key, _version = fs.split_path(path)
        part_size = max(self.block_size, -(-size // S3_MAX_PARTS))
        upload = fs.call_s3("create_multipart_upload", Bucket=bucket, Key=key)
        upload_id = upload["UploadId"]
        try:
            parts: list[dict[str, Any]] = []
            for number, body in enumerate(_parts(data, part_size), start=1):
                out = fs.call_s3(
                    "upload_part",
                    Bucket=bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=_PartReader(body),
                )
                part = {"PartNumber": number, "ETag": out["ETag"]}
                if "ChecksumSHA256" in out:
                    part["ChecksumSHA256"] = out["ChecksumSHA256"]
                parts.append(part)
            fs.call_s3(
                "complete_multipart_upload",
                Bucket=bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
        except BaseException:
            # Nothing was published; free the parts the server holds (best effort: a bucket
            # lifecycle rule AbortIncompleteMultipartUpload catches what a crash leaves).
            with contextlib.suppress(Exception):
                fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id)
            raise
        fs.invalidate_cache(path)

    def _put_streamed(self, path: str, data: Data) -> None:
        f = self.fs.open(path, "wb", block_size=self.block_size)
        try:
            for chunk in iter_chunks(data):
                f.write(chunk)
        except BaseException:
            # Never let close() (or __del__, which calls it) publish a partial object.
            with contextlib.suppress(Exception):
                f.closed = True
            discard = getattr(f, "discard", None)
            if discard is not None:
                with contextlib.suppress(Exception):
                    discard()
            raise
        f.close()

    # -- reads ---------------------------------------------------------------------------------
    def get(self, key: str) -> Buffer | None:
        path = self.path(key)
        try:
            if self.is_s3:
                # One GET: s3fs would otherwise HEAD first to plan concurrent ranged reads.
                data: bytes = self.fs.cat_file(path, max_concurrency=1)
            else:
                data = self.fs.cat_file(path)
        except FileNotFoundError as exc:
            self._not_found(exc)
            return None
        except IsADirectoryError:
            return None
        return data

    def get_first(self, keys: Sequence[str]) -> tuple[str, Buffer] | None:
        paths = [self.path(k) for k in keys]
        if not self.is_s3 or len(paths) < 2:
            for key in keys:
                data = self.get(key)
                if data is not None:
                    return key, data
            return None
        # All candidates in one round of concurrent GETs (the manager's RUN-then-CORRELATION
        # lookup): a miss on the first no longer costs a round trip before the second.
        import asyncio

        from fsspec.asyn import sync

        fs = self.fs

        async def fetch_all() -> list[Any]:
            return await asyncio.gather(
                *(fs._cat_file(p, max_concurrency=1) for p in paths), return_exceptions=True
            )

        for key, result in zip(keys, sync(fs.loop, fetch_all), strict=True):
            if isinstance(result, FileNotFoundError):
                self._not_found(result)
            elif isinstance(result, BaseException):
                raise result
            else:
                return key, result
        return None

    def head(self, key: str) -> ObjectInfo | None:
        try:
            info = self.fs.info(self.path(key))
        except FileNotFoundError as exc:
            self._not_found(exc)
            return None
        if info.get("type") == "directory":
            return None
        return ObjectInfo(key, int(info.get("size") or 0), _modified(info))

    def delete(self, key: str) -> None:
        try:
            self.fs.rm_file(self.path(key))
        except FileNotFoundError as exc:
            self._not_found(exc)
        except IsADirectoryError:
            pass

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        validate_prefix(prefix)
        base = f"{self.root}/{prefix}".rstrip("/") if self.root else prefix.rstrip("/")
        try:
            found = self.fs.find(base, detail=True)
        except FileNotFoundError as exc:
            self._not_found(exc)
            return []
        out = []
        for path, info in found.items():
            if info.get("type") == "directory":
                continue
            key = self._key(path)
            # find() of a prefix that names a record returns the record itself: not below it.
            if not key.startswith(prefix) or any(p.startswith(".") for p in key.split("/")):
                continue
            out.append(ObjectInfo(key, int(info.get("size") or 0), _modified(info)))
        return out

    def delete_prefix(self, prefix: str) -> int:
        found = self.list(prefix)
        paths = [self.path(info.key) for info in found]
        # Never fs.rm(paths): it expands glob characters, and a key may contain them.
        if self.is_s3:
            bucket = self.fs.split_path(self.root or paths[0])[0] if paths else ""
            for start in range(0, len(paths), 1000):
                batch = paths[start : start + 1000]
                objects = [{"Key": self.fs.split_path(p)[1]} for p in batch]
                out = self.fs.call_s3(
                    "delete_objects", Bucket=bucket, Delete={"Objects": objects, "Quiet": True}
                )
                if out.get("Errors"):
                    first = out["Errors"][0]
                    raise OSError(
                        errno.EIO,
                        f"{len(out['Errors'])} of {len(batch)} deletes failed, e.g. "
                        f"{first.get('Key')!r}: {first.get('Code')} {first.get('Message')}",
                    )
            self.fs.invalidate_cache(self.root)
        else:
            for path in paths:
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm_file(path)
        return len(found)


class _Translated:
    """What :meth:`FsspecStore._errors` returns: the ``with`` block's backend exceptions leave
    it as ckpt errors. A plain class rather than ``contextlib.contextmanager``: every save and
    load enters one, and a generator-based one costs about a microsecond more."""

    __slots__ = ("_action", "_key", "_store")

    def __init__(self, store: FsspecStore, action: str, key: str) -> None:
        self._store, self._action, self._key = store, action, key

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> Literal[False]:
        if not isinstance(exc, Exception):
            return False
        translated = self._store._translate(exc, self._action, self._key)
        if translated is None:
            return False
        raise translated from None


class FsspecStore(BlockingStore):
    """A store on a local directory or any fsspec URL.

    Args:
        url: ``"./dir"``, ``"file:///abs/dir"``, ``"s3://bucket/prefix"``, ``"gs://..."``...
        fsync: local only; fsync files and directories (default ``True``; ``False`` trades
            durability across power loss for speed, atomicity is kept).
        multipart_threshold: records above this size are streamed (S3 multipart upload, GCS
            resumable upload) instead of sent in one request.
        block_size: part size of streamed uploads (at least 5 MiB on S3).
        **storage_options: passed to the fsspec filesystem, exactly as pandas/s3fs take them
            (``endpoint_url``, ``key``, ``secret``, ``client_kwargs``, ``config_kwargs``,
            ``anon``, ``profile``...). Without credentials s3fs uses the standard AWS chain.
    """

    capabilities = frozenset({"atomic", "multiprocess", "streaming"})

    def __init__(
        self,
        url: str,
        *,
        fsync: bool = True,
        multipart_threshold: int = 16 << 20,
        block_size: int = 5 << 20,
        **storage_options: Any,
    ) -> None:
        self.url = redact_url(url)
        self._secrets = _secrets(storage_options)
        import fsspec.core

        protocol, _ = fsspec.core.split_protocol(url)
        impl: LocalFiles | _RemoteFiles
        if protocol is None or protocol in _LOCAL_PROTOCOLS:
            root = url.split("://", 1)[1] if protocol else url
            impl = LocalFiles(root, fsync=fsync)
            self.local = True
        else:
            if protocol in _S3_PROTOCOLS:
                if block_size < S3_MIN_PART:
                    raise StoreConfigError(
                        f"block_size={block_size} for {self.url} is below S3's minimum part "
                        f"size of {S3_MIN_PART} bytes (5 MiB)"
                    )
                storage_options = _s3_defaults(storage_options)
            storage_options.setdefault("use_listings_cache", False)
            try:
                impl = _RemoteFiles(url, storage_options, protocol, multipart_threshold, block_size)
            except ImportError as exc:
                raise StoreConfigError(
                    f"cannot open {self.url}: {exc}. Install the filesystem package "
                    "(for s3:// that is pip install 'ckpt[s3]', for gs:// 'ckpt[gcs]')"
                ) from None
            except (TypeError, ValueError) as exc:
                raise StoreConfigError(f"cannot open {self.url}: {self._scrub(str(exc))}") from None
            self.local = False
            if protocol not in _S3_PROTOCOLS and protocol not in _PUBLISH_ON_CLOSE:
                # One pipe_file per record: atomic where the filesystem makes it so, but the
                # record is joined in memory, and an in-process filesystem is one process.
                self.capabilities = frozenset({"atomic"})
        self._files = impl

    @property
    def fs(self) -> Any:
        """The underlying fsspec filesystem (``None`` for the local fast path)."""
        return self._files.fs if isinstance(self._files, _RemoteFiles) else None

    def _scrub(self, text: str) -> str:
        return redact_text(text, self._secrets)

    def _errors(self, action: str, key: str) -> _Translated:
        """``with self._errors(action, key):`` raises backend exceptions as ckpt errors."""
        return _Translated(self, action, key)

    def _translate(self, exc: Exception, action: str, key: str) -> CheckpointError | None:
        """The ckpt error a backend exception becomes (``None``: it already is one)."""
        if isinstance(exc, CheckpointError):
            return None
        if isinstance(exc, PermissionError):
            return StoreConfigError(
                f"{action} {key!r} on {self.url} was refused "
                f"({self._scrub(str(exc.strerror or exc))}); check the credentials "
                "(key/secret, profile or environment) and the bucket's permissions"
            )
        if isinstance(exc, OSError):
            if not self.local and _missing_bucket(exc):
                return StoreConfigError(
                    f"{action} {key!r} on {self.url} failed: the bucket does not exist. "
                    "Create it, or fix the bucket name in the URL"
                )
            if is_disk_full(exc):
                # Local writes go to a temp file that is removed when the write fails.
                left = "nothing partial was left, and " if self.local else ""
                return StoreUnavailable(
                    f"{action} {key!r} on {self.url} failed: {disk_full_advice(exc)}; "
                    f"{left}earlier checkpoints are intact"
                )
            if exc.errno in (errno.ENOENT, errno.ENOTDIR) and not self.local:
                return StoreConfigError(
                    f"{action} {key!r} on {self.url} failed: {self._scrub(str(exc))}. Does the "
                    "bucket exist?"
                )
            return StoreUnavailable(
                f"{action} {key!r} on {self.url} failed: {type(exc).__name__}: "
                f"{self._scrub(str(exc))}"
            )
        name = type(exc).__name__
        text = self._scrub(str(exc))
        if name in _CONFIG_ERRORS:
            return StoreConfigError(
                f"{action} {key!r} on {self.url} failed: {name}: {text}. Check the "
                "storage options (credentials, region, endpoint_url)"
            )
        return StoreUnavailable(
            f"{action} {key!r} on {self.url} failed after retries: {name}: {text}. Check "
            "that the endpoint is reachable; checkpoints already written are not affected"
        )

    def put(self, key: str, data: Data) -> None:
        with self._errors("writing", key):
            self._files.put(key, data)

    def get(self, key: str) -> Buffer | None:
        with self._errors("reading", key):
            return self._files.get(key)

    def get_first(self, keys: Sequence[str]) -> tuple[str, Buffer] | None:
        with self._errors("reading", next(iter(keys), "")):
            return self._files.get_first(keys)

    def read_first(
        self, keys: Sequence[str], read: Callable[[str, ReadStream], R]
    ) -> tuple[str, R] | None:
        if not isinstance(self._files, LocalFiles):
            return super().read_first(keys, read)
        try:  # not ``with self._errors(...)``: this is every local load's path
            return self._files.read_first(keys, read)
        except Exception as exc:
            translated = self._translate(exc, "reading", next(iter(keys), ""))
            if translated is None:
                raise
            raise translated from None

    def head(self, key: str) -> ObjectInfo | None:
        with self._errors("checking", key):
            return self._files.head(key)

    def delete(self, key: str) -> None:
        with self._errors("deleting", key):
            self._files.delete(key)

    def delete_prefix(self, prefix: str) -> int:
        with self._errors("deleting", prefix):
            return self._files.delete_prefix(prefix)

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        with self._errors("listing", prefix):
            return self._files.list(prefix)

    def sweep_temp_files(self, older_than: float = 3600.0) -> int:
        """Local only: remove temp files left by writers that were killed mid-write."""
        if isinstance(self._files, LocalFiles):
            return self._files.sweep_temp_files(older_than)
        return 0

    def lease_backend(self) -> LeaseBackend:
        """Local directories lock a file (``flock``); S3 uses conditional writes; other
        filesystems have no lease primitive. See :mod:`ckpt_core.lease`."""
        leases: LeaseBackend | None = getattr(self, "_leases", None)
        if leases is None:
            if isinstance(self._files, LocalFiles):
                leases = _LocalLeases(self, self._files.root)
            elif self._files.is_s3:
                leases = _S3Leases(self, self._files)
            else:
                raise unsupported(self)
            self._leases = leases
        return leases


def _s3_defaults(options: dict[str, Any]) -> dict[str, Any]:
    """Bounded timeouts and retries for s3fs unless the user chose their own."""
    options = dict(options)
    config = dict(options.get("config_kwargs") or {})
    config.setdefault("connect_timeout", 3)
    env_chose = os.environ.get("AWS_MAX_ATTEMPTS") or os.environ.get("AWS_RETRY_MODE")
    if "retries" not in config and not env_chose:
        config["retries"] = {"total_max_attempts": 3, "mode": "standard"}
    options["config_kwargs"] = config
    return options


# -- leases (exclusive=True; see ckpt_core.lease) -----------------------------------------------

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class _LocalLeases(BlockingLeaseBackend):
    """A lease is an exclusive ``flock`` on ``<root>/.leases/<ns>/<corr>``.

    The kernel releases the lock when the holder's descriptor closes, including when its process
    dies, so a lease never outlives its process and needs no expiry. The holder's record is
    written into the locked file for the next contender to read. Release unlinks the file while
    still holding the lock; a contender that locked the file just before the unlink notices
    (the path no longer names its inode) and starts again, so two holders never coexist.
    """

    expires = False

    def __init__(self, store: FsspecStore, root: str) -> None:
        self.url = store.url
        self._store = store
        self._dir = os.path.join(root, LEASE_DIR)

    def _path(self, name: str) -> str:
        return os.path.join(self._dir, *validate_key(name).split("/"))

    @staticmethod
    def _is_file_at(fd: int, path: str) -> bool:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return False
        mine = os.fstat(fd)
        return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)

    @staticmethod
    def _read_holder(fd: int) -> bytes | None:
        """The record in a file someone else has locked (it may be mid-write: retry briefly)."""
        data = b""
        for _ in range(20):
            data = os.pread(fd, 1 << 16, 0)
            try:
                json.loads(data)
                return data
            except ValueError:
                time.sleep(0.005)
        return data or None

    def acquire(self, name: str, record: bytes, ttl: float) -> Claim | Held:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            raise unsupported(self._store) from None
        path = self._path(name)
        with self._store._errors("taking the lease", name):
            for _ in range(20):
                try:
                    fd = os.open(path, os.O_RDWR | os.O_CREAT | _O_CLOEXEC, 0o644)
                except FileNotFoundError:
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    continue
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = self._read_holder(fd)
                    os.close(fd)
                    return Held(holder, None)
                except BaseException:
                    os.close(fd)
                    raise
                if not self._is_file_at(fd, path):
                    os.close(fd)  # released (unlinked) between our open and our lock
                    continue
                try:
                    os.ftruncate(fd, 0)
                    os.pwrite(fd, record, 0)
                except BaseException:
                    os.close(fd)
                    raise
                return Claim(name, fd)
        raise StoreUnavailable(
            f"taking the lease {name!r} on {self.url}: the lock file kept being replaced while "
            "we locked it; retry"
        )

    def renew(self, claim: Claim, record: bytes, ttl: float) -> Claim | None:
        # Nothing expires; the lock is still ours unless someone removed the file under it.
        with self._store._errors("renewing the lease", claim.name):
            return claim if self._is_file_at(claim.token, self._path(claim.name)) else None

    def release(self, claim: Claim) -> None:
        fd = claim.token
        with self._store._errors("releasing the lease", claim.name):
            try:
                path = self._path(claim.name)
                if self._is_file_at(fd, path):
                    os.unlink(path)  # while still locked: see the class docstring
            finally:
                os.close(fd)


#: Error codes of an S3 conditional request whose condition did not hold (412), or that raced a
#: concurrent conditional request on the same key (409, AWS).
_CONDITION_FAILED = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}
_NOT_SUPPORTED = {"NotImplemented", "501"}


def _s3_error_code(exc: BaseException) -> str | None:
    """The S3 error code behind ``exc`` (s3fs wraps botocore's ``ClientError`` in an OSError)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        response = getattr(current, "response", None)
        if isinstance(response, dict):
            code = response.get("Error", {}).get("Code")
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code or status:
                return str(code or status)
        current = current.__cause__ or current.__context__
    return None


@dataclass(frozen=True)
class _LeaseObject:
    data: bytes
    etag: str
    age: float
    ttl: float | None


class _S3Leases(BlockingLeaseBackend):
    """A lease is the object ``<prefix>/.leases/<ns>/<corr>``; every write is a compare-and-swap.

    - Take a free lease: ``PutObject`` with ``If-None-Match: *`` (only one creator wins).
    - Take an expired lease: ``PutObject`` with ``If-Match: <ETag we judged expired>``; if the
      holder renewed or another contender took it meanwhile, the ETag changed and we get 412.
    - Renew: ``PutObject`` with ``If-Match: <our ETag>`` and a new body (a renewal counter in it,
      so each renewal has a new ETag and an old ETag can never match again).
    - Release: ``DeleteObject`` with ``If-Match: <our ETag>``: never deletes a successor's lease.

    Every version of the lease object is therefore written by exactly one party that saw the
    version before it, so two holders never coexist. (Delete-then-create would not be safe: two
    contenders could each delete the other's fresh lease.) Expiry is judged on the server's clock:
    the age is the response's ``Date`` minus the object's ``Last-Modified``, and both have
    one-second resolution, so a lease counts as expired one second after its ttl.

    Before the first lease, the server is probed once for enforcing these conditions (some
    S3-compatible servers ignore them); if it does not, exclusive runs are refused with a
    :class:`StoreConfigError` rather than silently unprotected.
    """

    SLACK = 1.0

    def __init__(self, store: FsspecStore, files: _RemoteFiles) -> None:
        self.url = store.url
        self._store = store
        self._files = files
        self._probed = False
        self._probe_lock = threading.Lock()

    def _location(self, name: str) -> tuple[str, str]:
        root = self._files.root
        bucket, key, _version = self._files.fs.split_path(f"{root}/{LEASE_DIR}/{name}")
        return bucket, key

    def _put(
        self, bucket: str, key: str, record: bytes, ttl: float, **condition: str
    ) -> str | None:
        """Write the lease object if ``condition`` holds: its new ETag, or ``None`` if not."""
        try:
            out = self._files.fs.call_s3(
                "put_object",
                Bucket=bucket,
                Key=key,
                Body=record,
                Metadata={"ckpt-lease-ttl": repr(float(ttl))},
                **condition,
            )
        except Exception as exc:
            if _s3_error_code(exc) in _CONDITION_FAILED:
                return None
            raise
        return str(out["ETag"])

    def _read(self, bucket: str, key: str) -> _LeaseObject | None:
        """The lease object with its ETag and age on the server's clock, or ``None``."""
        from fsspec.asyn import sync

        fs = self._files.fs

        async def fetch() -> tuple[dict[str, Any], bytes] | None:
            try:
                out = await fs._call_s3("get_object", Bucket=bucket, Key=key)
            except FileNotFoundError:
                return None
            try:
                data = await out["Body"].read()
            finally:
                out["Body"].close()
            return out, data

        got = sync(fs.loop, fetch)
        if got is None:
            return None
        out, data = got
        modified = out.get("LastModified")
        date = out.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
        now = email.utils.parsedate_to_datetime(date).timestamp() if date else time.time()
        age = now - modified.timestamp() if modified is not None else float("inf")
        try:
            ttl: float | None = float(out.get("Metadata", {})["ckpt-lease-ttl"])
        except (KeyError, TypeError, ValueError):
            ttl = None
        return _LeaseObject(bytes(data), str(out["ETag"]), age, ttl)

    def _check_conditional_writes(self, bucket: str) -> None:
        """Once per store: does the server enforce If-None-Match and If-Match?"""
        if self._probed:
            return
        with self._probe_lock:
            if self._probed:
                return
            _, key = self._location(f".probe-{uuid.uuid4().hex[:12]}")
            fs = self._files.fs
            problem = None
            try:
                if self._put(bucket, key, b"probe", 0, IfNoneMatch="*") is None:
                    problem = "refused to create a new object with If-None-Match: *"
                elif self._put(bucket, key, b"probe", 0, IfNoneMatch="*") is not None:
                    problem = "overwrote an existing object despite If-None-Match: *"
                elif self._put(bucket, key, b"probe", 0, IfMatch='"' + "0" * 32 + '"'):
                    problem = "overwrote an object whose ETag did not match If-Match"
                else:
                    try:
                        fs.call_s3(
                            "delete_object", Bucket=bucket, Key=key, IfMatch='"' + "0" * 32 + '"'
                        )
                        problem = "deleted an object whose ETag did not match If-Match"
                    except Exception as exc:
                        if _s3_error_code(exc) not in _CONDITION_FAILED:
                            raise
            except Exception as exc:
                if _s3_error_code(exc) not in _NOT_SUPPORTED:
                    raise
                problem = f"does not implement conditional requests ({_s3_error_code(exc)})"
            finally:
                with contextlib.suppress(Exception):
                    fs.call_s3("delete_object", Bucket=bucket, Key=key)
            if problem:
                raise StoreConfigError(
                    f"exclusive=True needs an S3 server that enforces conditional writes "
                    f"(If-None-Match on PutObject, If-Match on PutObject and DeleteObject), but "
                    f"{self.url} {problem}. Use AWS S3, a server with conditional writes, or a "
                    "Redis store for exclusive runs"
                )
            self._probed = True

    def acquire(self, name: str, record: bytes, ttl: float) -> Claim | Held:
        bucket, key = self._location(validate_key(name))
        with self._store._errors("taking the lease", name):
            self._check_conditional_writes(bucket)
            for _ in range(8):
                etag = self._put(bucket, key, record, ttl, IfNoneMatch="*")
                if etag is not None:
                    return Claim(name, etag)
                current = self._read(bucket, key)
                if current is None:
                    continue  # released since our put: try again
                if current.data == record:
                    # Our own put landed, and a retry of it (lost response) was refused.
                    return Claim(name, current.etag)
                left = (ttl if current.ttl is None else current.ttl) + self.SLACK - current.age
                if left > 0:
                    return Held(current.data, left)
                etag = self._put(bucket, key, record, ttl, IfMatch=current.etag)
                if etag is not None:
                    return Claim(name, etag)
                # Renewed or taken by someone else since we read it: look again.
        raise StoreUnavailable(
            f"taking the lease {name!r} on {self.url}: it changed hands 8 times while we "
            "tried; retry"
        )

    def renew(self, claim: Claim, record: bytes, ttl: float) -> Claim | None:
        bucket, key = self._location(validate_key(claim.name))
        with self._store._errors("renewing the lease", claim.name):
            etag = self._put(bucket, key, record, ttl, IfMatch=claim.token)
            if etag is not None:
                return Claim(claim.name, etag)
            current = self._read(bucket, key)
            if current is not None and current.data == record:
                return Claim(claim.name, current.etag)  # our put landed; its retry was refused
            return None

    def release(self, claim: Claim) -> None:
        bucket, key = self._location(validate_key(claim.name))
        with self._store._errors("releasing the lease", claim.name):
            try:
                self._files.fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=claim.token)
            except FileNotFoundError:
                return
            except Exception as exc:
                if _s3_error_code(exc) not in _CONDITION_FAILED:
                    raise
            self._files.fs.invalidate_cache(f"{self._files.root}/{LEASE_DIR}")
