"""Crash-safe record files on a local filesystem (used by :class:`FsspecStore` for local paths).

A write goes to ``.<name>.<random>.tmp`` in the record's own directory, is fsynced, renamed over the
record with ``os.replace`` (atomic on POSIX), and the directory is fsynced so the rename survives a
power cut. Readers open the record by name and therefore see the old file or the new one, never a
half-written one. Names starting with ``.`` are never records (ids are encoded so that none starts
with a dot), so a temp file left by a killed writer is ignored by ``get``/``list`` and removed by
:meth:`LocalFiles.sweep_temp_files`.

A prefix delete renames the directory to a hidden name first, so a concurrent ``list`` sees the
whole correlation or none of it, then removes it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import time
import uuid
from collections.abc import Callable, Sequence

from ..serde.base import Buffer
from .base import (
    BufferStream,
    Data,
    ObjectInfo,
    R,
    ReadStream,
    iter_chunks,
    validate_key,
    validate_prefix,
)

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
TEMP_SUFFIX = ".tmp"


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | _O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, chunk: Buffer) -> None:
    view = memoryview(chunk).cast("B")
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _read_exactly_at(fd: int, size: int) -> Buffer:
    buf = bytearray(size)
    filled = 0
    view = memoryview(buf)
    while filled < size:
        n = os.preadv(fd, [view[filled:]], filled)
        if not n:
            break
        filled += n
    return buf if filled == size else buf[:filled]


def _read_exactly(fd: int, size: int) -> Buffer:
    """Read a whole file of ``size`` bytes. Small files take one ``read`` into a new ``bytes``;
    large ones are read in place into one buffer, never joined from pieces.

    A file that shrank while we read it cannot be a record we wrote (we never write in place);
    the short result lets the envelope report it as truncated."""
    if size <= _ONE_READ:
        data = os.read(fd, size)
        while len(data) < size:
            more = os.read(fd, size - len(data))
            if not more:
                break
            data += more
        return data
    buf = bytearray(size)
    view = memoryview(buf)
    filled = 0
    while filled < size:
        n = os.readv(fd, [view[filled:]])
        if not n:
            break
        filled += n
    return buf if filled == size else buf[:filled]


#: Attempts of a write whose directory a concurrent prefix delete moved away.
_DIRECTORY_RACE_ATTEMPTS = 5
#: Files up to this size are read with one ``os.read`` (one syscall, no zero-filled buffer).
_ONE_READ = 1 << 20
#: A lookup reads this much before it knows the file's size: a smaller record is then read
#: whole by that one call.
_FIRST_READ = 64 << 10


class FileStream:
    """A :class:`~ckpt_core.stores.base.ReadStream` over an open record file (positional reads,
    so nothing depends on the file offset)."""

    __slots__ = ("_fd", "size")
    in_memory = False

    def __init__(self, fd: int, size: int) -> None:
        self._fd = fd
        self.size = size

    def pread(self, n: int, offset: int) -> Buffer:
        n = max(0, min(n, self.size - offset))
        data = os.pread(self._fd, n, offset)  # a new bytes object, filled by the kernel
        while len(data) < n:
            more = os.pread(self._fd, n - len(data), offset + len(data))
            if not more:
                break
            data += more
        return data

    def preadinto(self, view: memoryview, offset: int) -> int:
        filled = 0
        while filled < view.nbytes:
            n = os.preadv(self._fd, [view[filled:]], offset + filled)
            if not n:
                break
            filled += n
        return filled

    def whole(self) -> Buffer:
        return _read_exactly_at(self._fd, self.size)


class LocalFiles:
    """The local-filesystem primitives; errors are raw ``OSError`` (the store translates them)."""

    def __init__(self, root: str, *, fsync: bool = True) -> None:
        self.root = os.path.abspath(root)
        self.fsync = fsync

    def path(self, key: str) -> str:
        validate_key(key)
        return f"{self.root}/{key}" if os.sep == "/" else os.path.join(self.root, *key.split("/"))

    def _makedirs(self, directory: str) -> None:
        """Create ``directory`` and fsync each parent whose entries changed."""
        missing: list[str] = []
        probe = directory
        while not os.path.isdir(probe):
            missing.append(probe)
            parent = os.path.dirname(probe)
            if parent == probe:
                break
            probe = parent
        for path in reversed(missing):
            try:
                os.mkdir(path)
            except FileExistsError:
                continue
            if self.fsync:
                _fsync_dir(os.path.dirname(path))

    def put(self, key: str, data: Data) -> None:
        # A prefix delete of the record's run or correlation renames its directory away; a write
        # caught in between loses its directory (the temp file moves with it) and starts again,
        # so it lands after the delete instead of failing. ``data`` is iterable once per attempt.
        for attempt in range(_DIRECTORY_RACE_ATTEMPTS):
            try:
                return self._put_once(key, data)
            except FileNotFoundError:
                if attempt == _DIRECTORY_RACE_ATTEMPTS - 1:
                    raise

    def _put_once(self, key: str, data: Data) -> None:
        path = self.path(key)
        directory, name = os.path.split(path)
        tmp = os.path.join(directory, f".{name}.{uuid.uuid4().hex[:12]}{TEMP_SUFFIX}")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_CLOEXEC
        try:
            fd = os.open(tmp, flags, 0o666)
        except FileNotFoundError:
            self._makedirs(directory)
            fd = os.open(tmp, flags, 0o666)
        try:
            try:
                for chunk in iter_chunks(data):
                    _write_all(fd, chunk)
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        if self.fsync:
            _fsync_dir(directory)

    def get(self, key: str) -> Buffer | None:
        try:
            fd = os.open(self.path(key), os.O_RDONLY | _O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return None  # a directory holding records (POSIX opens it read-only) is no record
            return _read_exactly(fd, st.st_size)
        finally:
            os.close(fd)

    def get_first(self, keys: Sequence[str]) -> tuple[str, Buffer] | None:
        for key in keys:
            data = self.get(key)
            if data is not None:
                return key, data
        return None

    def read_first(
        self, keys: Sequence[str], read: Callable[[str, ReadStream], R]
    ) -> tuple[str, R] | None:
        """Hand the first existing record to ``read``: a small one read whole, a large one as a
        :class:`FileStream` over its open file, so its payload is read once, straight into the
        buffer it is decoded from (no zero-filled copy of the whole record, no second copy)."""
        for key in keys:
            try:
                fd = os.open(self.path(key), os.O_RDONLY | _O_CLOEXEC)
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                continue
            try:
                try:
                    first = os.read(fd, _FIRST_READ)
                except IsADirectoryError:
                    continue  # a directory of records, not a record
                if len(first) < _FIRST_READ and not os.read(fd, 1):
                    # The whole file, at end of file: most records are small, and this skips
                    # the fstat (a short read is confirmed by the empty one, never assumed).
                    return key, read(key, BufferStream(first))
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    continue
                if st.st_size <= _ONE_READ:
                    # One positional read of the whole file: reading its first 64 KiB again
                    # from the page cache costs less than joining them to the rest (a copy).
                    stream = FileStream(fd, st.st_size)
                    return key, read(key, BufferStream(stream.pread(st.st_size, 0)))
                # The file is never rewritten in place (writes rename a new file over it), so
                # the open descriptor reads one consistent record however long reading takes.
                return key, read(key, FileStream(fd, st.st_size))
            finally:
                os.close(fd)
        return None

    def head(self, key: str) -> ObjectInfo | None:
        try:
            st = os.stat(self.path(key))
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        return ObjectInfo(key, st.st_size, st.st_mtime)

    def delete(self, key: str) -> None:
        # IsADirectoryError: the key names a directory of records, not a record; nothing to do.
        with contextlib.suppress(FileNotFoundError, NotADirectoryError, IsADirectoryError):
            os.unlink(self.path(key))

    def _walk(self, directory: str, key_prefix: str) -> list[ObjectInfo]:
        out: list[ObjectInfo] = []
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return out
        for entry in entries:
            if entry.name.startswith("."):
                continue
            key = key_prefix + entry.name
            try:
                if entry.is_dir(follow_symlinks=False):
                    out.extend(self._walk(entry.path, key + "/"))
                elif entry.is_file(follow_symlinks=False):
                    st = entry.stat(follow_symlinks=False)
                    out.append(ObjectInfo(key, st.st_size, st.st_mtime))
            except FileNotFoundError:
                continue  # deleted while we listed
        return out

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        validate_prefix(prefix)
        directory = os.path.join(self.root, *prefix.rstrip("/").split("/")) if prefix else self.root
        return self._walk(directory, prefix)

    def delete_prefix(self, prefix: str) -> int:
        validate_prefix(prefix)
        if not prefix:
            doomed = self.list("")
            for info in doomed:
                self.delete(info.key)
            return len(doomed)
        directory = os.path.join(self.root, *prefix.rstrip("/").split("/"))
        parent, name = os.path.split(directory)
        trash = os.path.join(parent, f".{name}.{uuid.uuid4().hex[:12]}.deleting")
        try:
            os.rename(directory, trash)
        except (FileNotFoundError, NotADirectoryError):
            return 0
        count = sum(1 for _, _, files in os.walk(trash) for f in files if not f.startswith("."))
        for _attempt in range(_DIRECTORY_RACE_ATTEMPTS):
            # A writer that looked the directory up just before the rename creates its temp file
            # in the trash (it then finds its directory gone and writes again): remove that too.
            shutil.rmtree(trash, ignore_errors=True)
            if not os.path.lexists(trash):
                break
        if self.fsync:
            _fsync_dir(parent)
        return count

    def sweep_temp_files(self, older_than: float = 3600.0) -> int:
        """Remove temp files and half-deleted directories left by killed processes."""
        cutoff = time.time() - older_than
        removed = 0
        for directory, dirs, files in os.walk(self.root):
            for name in files:
                if name.startswith(".") and name.endswith(TEMP_SUFFIX):
                    path = os.path.join(directory, name)
                    try:
                        if os.stat(path).st_mtime < cutoff:
                            os.unlink(path)
                            removed += 1
                    except FileNotFoundError:
                        pass
            for name in list(dirs):
                if name.startswith(".") and name.endswith(".deleting"):
                    shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
                    dirs.remove(name)
                    removed += 1
        return removed


def is_disk_full(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def disk_full_advice(exc: OSError) -> str:
    """What ran out, and what to do, for an error :func:`is_disk_full` accepts."""
    reason = exc.strerror or str(exc)
    if exc.errno == errno.EFBIG:
        return (
            f"{reason}: the record is larger than this process may write (ulimit -f) or than "
            "the filesystem allows. Raise the limit, or point ckpt at another store"
        )
    if exc.errno == errno.EDQUOT:
        return (
            f"{reason}: the disk quota is used up. Free space (ckpt gc removes old "
            "checkpoints) or raise the quota"
        )
    return (
        f"{reason}: the filesystem has no free space (or no free inodes) left. Free space "
        "(ckpt gc removes old checkpoints) or point ckpt at a larger store"
    )
