"""``FsspecStore``: local paths and any fsspec URL (``s3://``, ``gs://``, ``az://``, ``memory``...).

Local paths get :class:`~ckpt_core.stores.local.LocalFiles` (temp file, fsync, rename, directory
fsync). Other filesystems get one ``pipe_file`` PUT per record, or, above ``multipart_threshold``,
a streamed upload that becomes visible only when it completes (S3 multipart); there is no
read-modify-write anywhere. The fsspec filesystem is built once per store and reused.

Backend exceptions are translated in exactly one place, :meth:`FsspecStore._errors`, into
:class:`~ckpt_core.errors.StoreUnavailable` / :class:`~ckpt_core.errors.StoreConfigError`, with the
URL redacted.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator
from typing import Any

from ..errors import CheckpointError, StoreConfigError, StoreUnavailable
from ..redact import redact_url
from ..serde.base import Buffer
from .base import (
    BlockingStore,
    Data,
    ObjectInfo,
    data_size,
    iter_chunks,
    join_chunks,
    validate_key,
    validate_prefix,
)
from .local import LocalFiles, is_disk_full

_LOCAL_PROTOCOLS = {"file", "local"}


def _modified(info: dict[str, Any]) -> float | None:
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


class _RemoteFiles:
    """Primitives over any fsspec filesystem (object stores, memory, ...)."""

    def __init__(self, fs: Any, root: str, multipart_threshold: int, block_size: int) -> None:
        self.fs = fs
        self.root = root.rstrip("/")
        self.multipart_threshold = multipart_threshold
        self.block_size = block_size

    def path(self, key: str) -> str:
        return f"{self.root}/{validate_key(key)}" if self.root else validate_key(key)

    def _key(self, path: str) -> str:
        path = self.fs._strip_protocol(path)
        return path[len(self.root) + 1 :] if self.root else path

    def put(self, key: str, data: Data) -> None:
        path = self.path(key)
        if data_size(data) <= self.multipart_threshold:
            self.fs.pipe_file(path, join_chunks(data))
            return
        f = self.fs.open(path, "wb", block_size=self.block_size)
        try:
            for chunk in iter_chunks(data):
                f.write(chunk)
        except BaseException:
            # Abort the upload: closing would publish a partial object.
            discard = getattr(f, "discard", None)
            if discard is not None:
                discard()
            f.closed = True
            raise
        f.close()

    def get(self, key: str) -> Buffer | None:
        try:
            data: bytes = self.fs.cat_file(self.path(key))
        except FileNotFoundError:
            return None
        return data

    def head(self, key: str) -> ObjectInfo | None:
        try:
            info = self.fs.info(self.path(key))
        except FileNotFoundError:
            return None
        if info.get("type") == "directory":
            return None
        return ObjectInfo(key, int(info.get("size") or 0), _modified(info))

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self.path(key))

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        validate_prefix(prefix)
        base = f"{self.root}/{prefix}".rstrip("/") if self.root else prefix.rstrip("/")
        try:
            found = self.fs.find(base, detail=True)
        except FileNotFoundError:
            return []
        out = []
        for path, info in found.items():
            if info.get("type") == "directory":
                continue
            key = self._key(path)
            if any(part.startswith(".") for part in key.split("/")):
                continue
            out.append(ObjectInfo(key, int(info.get("size") or 0), _modified(info)))
        return out

    def delete_prefix(self, prefix: str) -> int:
        found = self.list(prefix)
        if found:
            self.fs.rm([self.path(info.key) for info in found])
        return len(found)


class FsspecStore(BlockingStore):
    """A store on a local directory or any fsspec URL.

    Args:
        url: ``"./dir"``, ``"file:///abs/dir"``, ``"s3://bucket/prefix"``, ``"gs://..."``...
        fsync: local only; fsync files and directories (default ``True``; ``False`` trades
            durability across power loss for speed, atomicity is kept).
        multipart_threshold: records above this size are streamed (multipart upload) instead of
            one PUT.
        block_size: part size of streamed uploads.
        **storage_options: passed to the fsspec filesystem, exactly as pandas/s3fs take them
            (``endpoint_url``, ``key``, ``secret``, ``client_kwargs``, ``anon``...).
    """

    capabilities = frozenset({"atomic", "multiprocess", "streaming"})

    def __init__(
        self,
        url: str,
        *,
        fsync: bool = True,
        multipart_threshold: int = 32 << 20,
        block_size: int = 16 << 20,
        **storage_options: Any,
    ) -> None:
        self.url = redact_url(url)
        self._raw_url = url
        import fsspec.core

        protocol, _ = fsspec.core.split_protocol(url)
        impl: LocalFiles | _RemoteFiles
        if protocol is None or protocol in _LOCAL_PROTOCOLS:
            root = url.split("://", 1)[1] if protocol else url
            impl = LocalFiles(root, fsync=fsync)
            self.local = True
        else:
            storage_options.setdefault("use_listings_cache", False)
            try:
                fs, root = fsspec.core.url_to_fs(url, **storage_options)
            except ImportError as exc:
                raise StoreConfigError(
                    f"cannot open {self.url}: {exc}. Install the filesystem package "
                    f"(for s3:// that is pip install 'ckpt[s3]')"
                ) from None
            except (TypeError, ValueError) as exc:
                raise StoreConfigError(f"cannot open {self.url}: {exc}") from None
            impl = _RemoteFiles(fs, root, multipart_threshold, block_size)
            self.local = False
        self._files = impl

    @property
    def fs(self) -> Any:
        """The underlying fsspec filesystem (``None`` for the local fast path)."""
        return getattr(self._files, "fs", None)

    @contextlib.contextmanager
    def _errors(self, action: str, key: str) -> Iterator[None]:
        try:
            yield
        except CheckpointError:
            raise
        except PermissionError as exc:
            raise StoreConfigError(
                f"{action} {key!r} on {self.url} was refused ({exc.strerror or exc}); check the "
                "credentials and permissions"
            ) from None
        except OSError as exc:
            if is_disk_full(exc):
                raise StoreUnavailable(
                    f"{action} {key!r} on {self.url} failed: {exc.strerror or exc}. Free space "
                    "or point ckpt at a larger store; earlier checkpoints are intact"
                ) from None
            if exc.errno in (errno.ENOENT, errno.ENOTDIR) and not self.local:
                raise StoreConfigError(
                    f"{action} {key!r} on {self.url} failed: {exc}. Does the bucket exist?"
                ) from None
            raise StoreUnavailable(
                f"{action} {key!r} on {self.url} failed: {type(exc).__name__}: {exc}"
            ) from None
        except Exception as exc:
            text = redact_url(str(exc))
            raise StoreUnavailable(
                f"{action} {key!r} on {self.url} failed: {type(exc).__name__}: {text}"
            ) from None

    def put(self, key: str, data: Data) -> None:
        with self._errors("writing", key):
            self._files.put(key, data)

    def get(self, key: str) -> Buffer | None:
        with self._errors("reading", key):
            return self._files.get(key)

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
