"""Hostile input through the whole load path (issue #6, item 5).

``test_envelope.py`` already fuzzes :func:`~ckpt_core.envelope.open_record` and ``test_keys.py``
the key encoding and the memory/local stores. This file goes through
:meth:`CheckpointManager.load` on real stores (bytes planted with the store's own ``put``):

- mutated records (bit flips, truncation, extension, splices, wrong magic/version/flags, a
  ``header_len`` up to 2**32-1) on memory, local and Redis: always ``CheckpointCorrupted``
  naming the key, with a bounded allocation;
- records with a *valid* checksum around a hostile header (an attacker who can write the store
  recomputes the sha256 trailer when no signing key is set): lying sizes, garbage JSON; both
  also through the local store's part-by-part read of large records;
- validly checksummed records with hostile codec metadata (numpy object dtypes and 10**12-element
  shapes, arrow IPC whose offsets point out of bounds, deep or huge JSON, pickles of modules
  outside the allowlist, unknown codecs) and hostile Redis chunk manifests (10 GB, 10**9 chunks,
  negative counts, missing chunks). These run in a child process under ``RLIMIT_AS`` (1 GB
  above what its libraries map), so a regression that allocates what a header declares, or a
  segfault, is a reported failure instead of a machine that swaps; the child also measures each
  load's peak with tracemalloc;
- hostile ids end to end on local, Redis and S3: every id round-trips or raises ``InvalidKey``
  naming it, and deleting correlation ``a`` never removes ``a:b``, ``a*`` or ``a/..``.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import ckpt_core as ckpt
from ckpt_core import envelope, keys
from ckpt_core.envelope import MAGIC, PREFIX_SIZE, Record

NS = "fuzz"
NODE = "step"
CTX = ckpt.RunContext(run_id="run-1", correlation_id="job-1")
SIGNING_KEY = b"fuzz-signing-key"
ENCRYPTION_KEY = "fuzz-encryption-key"
MB = 1 << 20
#: Peak allocation allowed for one load of a small hostile record (the records are < 100 KB).
PEAK_LIMIT = 50 * MB
#: Address space the child that loads the risky records may map beyond its libraries.
CHILD_HEADROOM = 1024 * MB
TEN_GB = 10 * 1000**3

# Writer/reader manager options per variant; the reader uses the writer's keys.
VARIANTS: dict[str, dict[str, Any]] = {
    "plain": {},
    "signed": {"signing_key": SIGNING_KEY},
    "encrypted": {"encryption_key": ENCRYPTION_KEY},
}


def manager(store: ckpt.Store, **options: Any) -> ckpt.CheckpointManager:
    return ckpt.CheckpointManager(store, namespace=NS, **options)


def record_key() -> str:
    return keys.record_key(NS, "correlation", CTX.correlation_id, NODE)


@functools.cache
def base_records() -> dict[str, list[bytes]]:
    """Valid records of every codec, per variant, as the manager writes them."""
    import numpy as np
    import pyarrow as pa

    values: list[Any] = [
        b"payload" * 40,
        {"a": [1, 2, {"b": None}], "s": "\u00e9\ud800"},
        np.arange(60, dtype="<f8").reshape(6, 10),
        {1, 2, 3},  # pickle
        pa.table({"s": ["x", "yy", ""], "i": [1, 2, 3]}),
        None,
        [{"k": "v" * 300}] * 3,  # a few hundred bytes: chunked on the Redis store below
    ]
    out: dict[str, list[bytes]] = {}
    for variant, options in VARIANTS.items():
        store = ckpt.MemoryStore()
        writer = manager(store, **options)
        records = []
        for value in values:
            writer.save(CTX, NODE, value)
            data = store.get(record_key())
            assert data is not None
            records.append(bytes(data))
        out[variant] = records
    return out


def forge(header: bytes | dict[str, Any], payload: bytes = b"", flags: int = 0) -> bytes:
    """A record with a *valid* digest trailer around any header (what an attacker with write
    access to an unsigned store can produce)."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    head = struct.pack(">4sBBI", MAGIC, envelope.VERSION, flags, len(raw)) + raw
    return head + payload + envelope.record_digest(head + payload)


def valid_record(codec: str, schema: Any, parts: list[bytes], **header: Any) -> bytes:
    """A record whose header is consistent and checksum valid, with chosen codec metadata."""
    fields = {"codec": codec, "schema": schema, "ns": NS, "node": NODE, **header}
    return Record(fields, parts, None).to_bytes()


def load_guarded(mgr: ckpt.CheckpointManager) -> tuple[Any, BaseException | None, int]:
    """Load under tracemalloc: ``(value, error, peak bytes)``."""
    tracemalloc.start()
    try:
        try:
            return mgr.load(CTX, NODE), None, tracemalloc.get_traced_memory()[1]
        except Exception as exc:
            return None, exc, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def assert_names_key(error: BaseException, key: str) -> None:
    assert key in str(error), f"{type(error).__name__} does not name {key}: {error}"
    if isinstance(error, ckpt.CheckpointCorrupted):
        assert error.key == key


# -- stores ------------------------------------------------------------------------------------


@pytest.fixture(params=["memory", "local", "redis"])
def fuzz_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ckpt.Store]:
    """A store to plant records in. Redis chunks anything above 256 bytes, so the chunked read
    path (manifest, then chunks) sees the hostile records too."""
    if request.param == "memory":
        store: ckpt.Store = ckpt.MemoryStore()
    elif request.param == "local":
        store = ckpt.FsspecStore(str(tmp_path / "store"), fsync=False)
    else:
        store = request.getfixturevalue("redis_store_factory")(chunk_size=256)
    yield store
    store.close()


# -- mutated records: always CheckpointCorrupted ------------------------------------------------


EDITS = ["flip", "truncate", "extend", "insert", "splice", "magic", "version", "flags"]
EDITS.append("header_len")


@st.composite
def mutations(draw: st.DrawFn) -> tuple[str, bytes]:
    """``(variant, bytes)``: a valid record with 1-3 hostile edits."""
    variant = draw(st.sampled_from(sorted(VARIANTS)))
    family = base_records()[variant]
    data = bytearray(draw(st.sampled_from(family)))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(EDITS))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[at:]
        elif op == "extend":
            data += draw(st.binary(min_size=1, max_size=64))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "splice":  # the head of this record, the tail of another
            other = draw(st.sampled_from(family))
            data = data[:at] + other[draw(st.integers(0, len(other))) :]
        elif op == "magic":
            data[0:4] = draw(st.binary(min_size=4, max_size=4).filter(lambda m: m != MAGIC))
        elif op == "version":
            data[4:5] = bytes([draw(st.integers(0, 255).filter(lambda v: v != envelope.VERSION))])
        elif op == "flags":
            data[5:6] = bytes([draw(st.integers(0, 255))])
        elif op == "header_len":
            value = draw(st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([2**32 - 1, 2**31])))
            data[6:PREFIX_SIZE] = struct.pack(">I", value)
    result = bytes(data)
    # A splice can rebuild a whole record of the family (a valid record, rightly loaded).
    assume(result not in family)
    return variant, result


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=mutations())
@pytest.mark.timeout(120)
def test_mutated_records_are_corrupted(fuzz_store: ckpt.Store, case: tuple[str, bytes]) -> None:
    variant, data = case
    key = record_key()
    fuzz_store.put(key, data)
    value, error, peak = load_guarded(manager(fuzz_store, **VARIANTS[variant]))
    assert isinstance(error, ckpt.CheckpointCorrupted), (value, error)
    assert_names_key(error, key)
    assert peak < PEAK_LIMIT


# -- valid checksum, hostile header ------------------------------------------------------------

HOSTILE_INTS = [TEN_GB, -1, -TEN_GB, 2**32 - 1, 2**63, 2**64 + 1, 10**400, 0, 1, 3]
json_leaf = st.one_of(
    st.sampled_from(HOSTILE_INTS),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.booleans(),
    st.none(),
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=12,
)
size_value = st.one_of(st.sampled_from(HOSTILE_INTS), json_value)


@functools.cache
def real_enc() -> dict[str, Any]:
    """The ``enc`` header of a real encrypted record (its key id is the reader's)."""
    header = envelope.read_header(base_records()["encrypted"][0], "k")
    return dict(header["enc"])


@st.composite
def enc_headers(draw: st.DrawFn) -> Any:
    """Encryption parameters: the reader's key id with hostile sizes, or garbage."""
    enc = real_enc()
    fields = {
        "seg": st.one_of(st.sampled_from(HOSTILE_INTS), st.just(enc["seg"]), json_value),
        "nonce": st.one_of(st.just(enc["nonce"]), st.text(max_size=24), json_value),
        "kid": st.one_of(st.just(enc["kid"]), json_value),
        "alg": st.one_of(st.just(enc["alg"]), json_value),
    }
    out = {name: draw(strategy) for name, strategy in fields.items() if draw(st.booleans())}
    return {**enc, **out} if draw(st.booleans()) else draw(st.one_of(st.just(out), json_value))


@st.composite
def hostile_headers(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """``(header bytes, payload)``: a JSON header whose fields lie, or bytes that are no JSON."""
    payload = draw(st.binary(max_size=64))
    kind = draw(st.sampled_from(["fields", "nested", "not-utf8", "not-an-object"]))
    if kind == "nested":
        depth = draw(st.sampled_from([1000, 10**5]))
        return b'{"codec": "raw", "size": ' + b"[" * depth + b"]" * depth + b"}", payload
    if kind == "not-utf8":
        return b'{"codec": "raw", "node": "\xff\xfe\xc0\x80"}', payload
    if kind == "not-an-object":
        return json.dumps(draw(json_value)).encode(), payload
    header: dict[str, Any] = {"ns": NS, "node": NODE}
    header["codec"] = draw(
        st.one_of(st.sampled_from(["raw", "json", "numpy", "arrow", "pickle"]), json_value)
    )
    if draw(st.booleans()):
        header["size"] = draw(size_value)
    else:
        header["size"] = len(payload)
    if draw(st.booleans()):
        header["parts"] = draw(st.one_of(st.lists(size_value, max_size=6), json_value))
    if draw(st.booleans()):
        header["schema"] = draw(json_value)
    if draw(st.booleans()):
        header[draw(st.sampled_from(["ns", "node", "hash"]))] = draw(json_value)
    if draw(st.booleans()):
        header["enc"] = draw(enc_headers())
    return json.dumps(header).encode(), payload


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=hostile_headers(), encrypted=st.booleans())
@pytest.mark.timeout(120)
def test_checksummed_hostile_headers(
    fuzz_store: ckpt.Store, case: tuple[bytes, bytes], encrypted: bool
) -> None:
    header, payload = case
    key = record_key()
    fuzz_store.put(key, forge(header, payload, flags=envelope.FLAG_ENCRYPTED if encrypted else 0))
    # allow_pickle=False: a forged pickle record would otherwise be code execution by design.
    options = VARIANTS["encrypted"] if encrypted else {}
    _, error, peak = load_guarded(manager(fuzz_store, allow_pickle=False, **options))
    if error is not None:
        # SchemaMismatch only for a json record naming a model class that does not resolve.
        assert isinstance(
            error, (ckpt.CheckpointCorrupted, ckpt.SerializationError, ckpt.SchemaMismatch)
        ), repr(error)
        assert_names_key(error, key)
    assert peak < PEAK_LIMIT


def make_every_local_record_large(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lower the thresholds above which the local store streams a record from its open file
    and the envelope reads it part by part, so small test records take that path."""
    import ckpt_core.stores.local

    monkeypatch.setattr(ckpt_core.stores.local, "_ONE_READ", 16)
    monkeypatch.setattr(ckpt_core.stores.local, "_FIRST_READ", 16)
    monkeypatch.setattr(envelope, "READ_SLICE", 16)
    probe = ckpt.FsspecStore(tempfile.mkdtemp(prefix="ckpt-probe-"), fsync=False)
    read = probe.read_first(["k"], lambda key, stream: stream)
    assert read is None
    probe.put("k", b"x" * 64)
    found = probe.read_first(["k"], lambda key, stream: stream.in_memory)
    assert found == ("k", False), "the local store no longer streams large records"
    shutil.rmtree(probe.url, ignore_errors=True)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    case=st.one_of(
        mutations(), hostile_headers().map(lambda case: ("forged", forge(case[0], case[1])))
    )
)
@pytest.mark.timeout(120)
def test_streamed_local_reads_of_hostile_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: tuple[str, bytes]
) -> None:
    """The local store reads large records part by part into their final buffers, sizing them
    from the header before the digest is checked; here every record counts as large."""
    make_every_local_record_large(monkeypatch)
    variant, data = case
    store = ckpt.FsspecStore(str(tmp_path / "streamed"), fsync=False)
    key = record_key()
    store.put(key, data)
    options = {"allow_pickle": False} if variant == "forged" else VARIANTS[variant]
    _, error, peak = load_guarded(manager(store, **options))
    if variant != "forged":
        assert isinstance(error, ckpt.CheckpointCorrupted), error
    elif error is not None:
        assert isinstance(
            error, (ckpt.CheckpointCorrupted, ckpt.SerializationError, ckpt.SchemaMismatch)
        ), repr(error)
    if error is not None:
        assert_names_key(error, key)
    assert peak < PEAK_LIMIT


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("backend", ["memory", "local", "redis", "s3"])
@pytest.mark.timeout(120)
def test_declared_ten_gb_reads_only_the_stored_bytes(
    backend: str,
    streamed: bool,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every store's read is bounded by what is stored, not by what a header declares (the
    local store's part-by-part reads included: ``streamed`` makes every record large)."""
    from .conftest import make_store

    if streamed:
        make_every_local_record_large(monkeypatch)
    store = make_store(backend, request, tmp_path)
    try:
        key = record_key()
        lies = [
            forge({"codec": "raw", "size": TEN_GB, "ns": NS, "node": NODE}, b"x" * 100),
            forge({"codec": "pickle", "size": TEN_GB, "parts": [TEN_GB, 0]}, b""),
            struct.pack(">4sBBI", MAGIC, 1, 0, 2**32 - 1) + b"{}" + bytes(32),
        ]
        for data in lies:
            store.put(key, data)
            _, error, peak = load_guarded(manager(store))
            assert isinstance(error, ckpt.CheckpointCorrupted), error
            assert_names_key(error, key)
            assert peak < PEAK_LIMIT
    finally:
        store.close()


# -- validly checksummed records with hostile codec metadata (child process, RLIMIT_AS) --------


def _arrow_stream(table: Any) -> bytearray:
    import pyarrow as pa
    import pyarrow.ipc

    sink = pa.BufferOutputStream()
    with pyarrow.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytearray(sink.getvalue().to_pybytes())


def _arrow_wild_offsets() -> bytes:
    """A string column whose offsets point 2 GB past its data (to_pandas segfaulted on it)."""
    import pyarrow as pa

    data = _arrow_stream(pa.table({"s": ["abc", "defgh", "ij"] * 4}))
    at = data.find(struct.pack("<4i", 0, 3, 8, 10))
    assert at > 0
    data[at + 4 : at + 8] = struct.pack("<i", 0x7FFF0000)
    return bytes(data)


def _arrow_huge_metadata() -> bytes:
    import pyarrow as pa

    data = _arrow_stream(pa.table({"i": [1, 2, 3]}))
    assert data[:4] == b"\xff\xff\xff\xff"  # continuation marker, then the metadata length
    data[4:8] = struct.pack("<i", 0x7FFFFFFF)
    return bytes(data)


def _pickle_ten_gb_bytes() -> bytes:
    """BINBYTES8 declaring 10 GB: CPython < 3.14 allocates the declared size before reading."""
    return b"\x80\x05\x8e" + struct.pack("<Q", TEN_GB) + b"abc"


def _numpy(descr: Any, shape: Any, payload: bytes, **extra: Any) -> bytes:
    schema = "numpy:" + json.dumps({"descr": descr, "shape": shape, **extra})
    return valid_record("numpy", schema, [payload])


NO_PICKLE = {"allow_pickle": False}
#: name -> (record builder, manager options, allowed outcomes). An outcome is an error class
#: name, or "value" when loading the record as data is legitimate (a consistent header).
HOSTILE: dict[str, tuple[Callable[[], bytes], dict[str, Any], tuple[str, ...]]] = {
    "numpy-object-dtype": (lambda: _numpy("|O", [1], bytes(8)), {}, ("CheckpointCorrupted",)),
    "numpy-object-dtype-empty": (
        lambda: _numpy("|O", [10**9], b""),
        {},
        ("CheckpointCorrupted",),
    ),
    "numpy-object-field": (
        lambda: _numpy([["a", "|O"]], [1], bytes(8)),
        {},
        ("CheckpointCorrupted",),
    ),
    "numpy-10**12-elements-empty": (
        lambda: _numpy("<f8", [10**6, 10**6], b""),
        {},
        ("CheckpointCorrupted",),
    ),
    "numpy-10**12-elements-16-bytes": (
        lambda: _numpy("<f8", [10**12], bytes(16)),
        {},
        ("CheckpointCorrupted",),
    ),
    "numpy-two-negative-dims": (
        lambda: _numpy("<f8", [-1, -1], bytes(8)),
        {},
        ("CheckpointCorrupted",),
    ),
    "numpy-negative-dim": (lambda: _numpy("<f8", [-8], b""), {}, ("CheckpointCorrupted",)),
    "numpy-float-dim": (lambda: _numpy("<f8", [2.5], bytes(16)), {}, ("CheckpointCorrupted",)),
    "numpy-bool-dim": (lambda: _numpy("<f8", [True], bytes(8)), {}, ("CheckpointCorrupted",)),
    "numpy-shape-not-a-list": (lambda: _numpy("<f8", "12", bytes(8)), {}, ("CheckpointCorrupted",)),
    "numpy-shape-size-mismatch": (
        lambda: _numpy("<f8", [3], bytes(16)),
        {},
        ("CheckpointCorrupted",),
    ),
    "numpy-65-dims": (lambda: _numpy("<f8", [1] * 65, bytes(8)), {}, ("CheckpointCorrupted",)),
    "numpy-huge-subarray-dtype": (
        lambda: _numpy([["a", "<f8", [10**6, 10**6]]], [1], bytes(8)),
        {},
        ("CheckpointCorrupted",),
    ),
    "numpy-unknown-dtype": (lambda: _numpy("<q99", [1], bytes(8)), {}, ("CheckpointCorrupted",)),
    "numpy-zero-itemsize-10**12": (
        lambda: _numpy("|V0", [10**12], b""),
        {},
        ("value", "CheckpointCorrupted", "SerializationError"),
    ),
    "numpy-strides-are-ignored": (
        lambda: _numpy("<f8", [2], struct.pack("<2d", 1.0, 2.0), strides=[-(10**12)]),
        {},
        ("value",),
    ),
    "numpy-nested-schema": (
        lambda: valid_record("numpy", "numpy:" + "[" * 10**5 + "]" * 10**5, [b""]),
        {},
        ("CheckpointCorrupted",),
    ),
    "numpy-no-schema": (lambda: valid_record("numpy", None, [b""]), {}, ("CheckpointCorrupted",)),
    "numpy-schema-not-a-str": (
        lambda: valid_record("numpy", {"descr": "<f8"}, [b""]),
        {},
        ("CheckpointCorrupted",),
    ),
    "numpy-two-parts": (
        lambda: valid_record("numpy", 'numpy:{"descr":"<f8","shape":[1]}', [bytes(8), b"x"]),
        {},
        ("SerializationError",),
    ),
    "arrow-garbage": (
        lambda: valid_record("arrow", "arrow:pandas", [b"\x00garbage" * 50]),
        {},
        ("SerializationError",),
    ),
    "arrow-empty": (
        lambda: valid_record("arrow", "arrow:table", [b""]),
        {},
        ("SerializationError",),
    ),
    "arrow-wild-string-offsets": (
        lambda: valid_record("arrow", "arrow:pandas", [_arrow_wild_offsets()]),
        {},
        ("SerializationError",),
    ),
    "arrow-wild-string-offsets-polars": (
        lambda: valid_record("arrow", "arrow:polars", [_arrow_wild_offsets()]),
        {},
        ("SerializationError",),
    ),
    "arrow-2-gb-metadata-length": (
        lambda: valid_record("arrow", "arrow:pandas", [_arrow_huge_metadata()]),
        {},
        ("SerializationError",),
    ),
    "arrow-truncated-stream": (
        lambda: valid_record("arrow", "arrow:table", [_arrow_wild_offsets()[:-40]]),
        {},
        ("SerializationError",),
    ),
    "json-nested-10**5": (
        lambda: valid_record("json", "json", [b"[" * 10**5 + b"]" * 10**5]),
        {},
        ("SerializationError",),
    ),
    "json-100-mb-integer": (
        lambda: valid_record("json", "json", [b"1" * (100 * MB)]),
        {},
        ("SerializationError",),
    ),
    "json-not-utf8": (
        lambda: valid_record("json", "json", [b'"\xff\xfe"']),
        {},
        ("SerializationError",),
    ),
    "json-schema-imports-a-module": (
        lambda: valid_record("json", "pydantic:this:Zen", [b"{}"]),
        NO_PICKLE,
        ("SchemaMismatch",),
    ),
    "json-schema-dunder-walk": (
        lambda: valid_record("json", "dataclass:os:__class__.__subclasses__", [b"{}"]),
        {},
        ("SchemaMismatch",),
    ),
    "pickle-when-not-allowed": (
        lambda: valid_record("pickle", None, [_pickle_ten_gb_bytes()]),
        NO_PICKLE,
        ("SerializationError",),
    ),
    "pickle-module-outside-allowlist": (
        lambda: valid_record("pickle", None, [b"cos\nsystem\n(S'echo pwned'\ntR."]),
        {"pickle_modules": ["json"]},
        ("SerializationError",),
    ),
    "pickle-builtins-eval-with-allowlist": (
        lambda: valid_record("pickle", None, [b"cbuiltins\neval\n(S'1+1'\ntR."]),
        {"pickle_modules": ["json"]},
        ("SerializationError",),
    ),
    "pickle-no-parts": (
        lambda: forge({"codec": "pickle", "size": 0, "parts": [], "ns": NS, "node": NODE}),
        {},
        ("SerializationError",),
    ),
    "unknown-codec": (lambda: valid_record("zstd-evil", None, [b"x"]), {}, ("SerializationError",)),
    "codec-not-a-str": (
        lambda: forge({"codec": ["raw"], "size": 0, "ns": NS, "node": NODE}),
        {},
        ("CheckpointCorrupted",),
    ),
    "raw-three-parts": (
        lambda: valid_record("raw", "bytes", [b"a", b"b", b"c"]),
        {},
        ("SerializationError",),
    ),
    "other-node": (
        lambda: Record({"codec": "raw", "ns": NS, "node": "other"}, [b"x"], None).to_bytes(),
        {},
        ("CheckpointCorrupted",),
    ),
}


# Redis manifests planted by the child: name -> (hash fields, chunk values by index, allowed).
MANIFESTS: dict[str, tuple[dict[str, Any], dict[int, bytes], tuple[str, ...]]] = {
    "manifest-10gb-10**9-chunks-none-stored": (
        {"gen": "g1", "n": 10**9, "size": TEN_GB},
        {},
        ("CheckpointNotFound", "CheckpointCorrupted"),
    ),
    "manifest-10gb-one-small-chunk": (
        {"gen": "g1", "n": 1, "size": TEN_GB},
        {0: b"x" * 10},
        ("CheckpointCorrupted",),
    ),
    "manifest-10gb-first-of-2500-chunks": (
        {"gen": "g1", "n": 2500, "size": TEN_GB},
        {0: b"x" * 4096},
        ("CheckpointNotFound", "CheckpointCorrupted"),
    ),
    "manifest-more-chunks-than-bytes": (
        {"gen": "g1", "n": 10**9, "size": 10},
        {},
        ("CheckpointCorrupted",),
    ),
    "manifest-negative-n": ({"gen": "g1", "n": -1, "size": 10}, {}, ("CheckpointCorrupted",)),
    "manifest-negative-size": ({"gen": "g1", "n": 1, "size": -10}, {}, ("CheckpointCorrupted",)),
    "manifest-zero-chunks": ({"gen": "g1", "n": 0, "size": 0}, {}, ("CheckpointCorrupted",)),
    "manifest-non-int": ({"gen": "g1", "n": "1e9", "size": "x"}, {}, ("CheckpointCorrupted",)),
    "manifest-5000-digit-size": (
        {"gen": "g1", "n": 1, "size": "9" * 5000},
        {},
        ("CheckpointCorrupted",),
    ),
    "manifest-without-gen": ({"n": 1, "size": 3}, {0: b"abc"}, ("CheckpointCorrupted",)),
    "manifest-glob-gen": ({"gen": "*", "n": 1, "size": 3}, {}, ("CheckpointCorrupted",)),
    "manifest-chunk-missing-in-the-middle": (
        {"gen": "g1", "n": 3, "size": 9},
        {0: b"abc", 2: b"ghi"},
        ("CheckpointNotFound", "CheckpointCorrupted"),
    ),
    "manifest-chunks-larger-than-declared": (
        {"gen": "g1", "n": 2, "size": 6},
        {0: b"abc", 1: b"def" * 1000},
        ("CheckpointCorrupted",),
    ),
    "manifest-chunks-smaller-than-declared": (
        {"gen": "g1", "n": 2, "size": 600},
        {0: b"abc", 1: b"def"},
        ("CheckpointCorrupted",),
    ),
    "manifest-chunks-add-up-to-garbage": (
        {"gen": "g1", "n": 2, "size": 6},
        {0: b"abc", 1: b"def"},
        ("CheckpointCorrupted",),
    ),
    "key-holds-a-list": ({}, {}, ("CheckpointCorrupted",)),
}


def _child_load(store: ckpt.Store, options: dict[str, Any]) -> dict[str, Any]:
    """Load the planted record under tracemalloc, as a JSON-able outcome."""
    value, error, peak = load_guarded(manager(store, **options))
    key = record_key()
    return {
        "outcome": "value" if error is None else type(error).__name__,
        "message": "" if error is None else str(error)[:500],
        "names_key": error is None or key in str(error),
        "key_attr": getattr(error, "key", key) in (key, None),
        "value": repr(value)[:200],
        "peak": peak,
    }


def _mapped_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmSize in /proc/self/status")


def _child_main(argv: list[str]) -> None:
    """Entry point of the guarded child (``python -m tests.test_fuzz URL PREFIX NAME...``)."""
    import resource

    # The codecs' libraries first: polars alone reserves ~1 GB of address space it never uses.
    # Then the limit: what is mapped now plus CHILD_HEADROOM, so allocating what a header
    # declares (8 GB, 10 GB) fails with MemoryError instead of succeeding or swapping.
    import numpy  # noqa: F401
    import pandas  # noqa: F401
    import polars  # noqa: F401
    import pyarrow.ipc  # noqa: F401

    limit = _mapped_bytes() + CHILD_HEADROOM
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    redis_url, prefix, *names = argv
    for name in names:
        print(json.dumps({"case": name, "started": True}), flush=True)
        if name in HOSTILE:
            build, options, _ = HOSTILE[name]
            store: ckpt.Store = ckpt.MemoryStore()
            store.put(record_key(), build())
            imported_before = "this" in sys.modules
            result = _child_load(store, options)
            result["imported_this"] = "this" in sys.modules and not imported_before
        else:
            import redis

            from ckpt_core.stores.redis import RedisStore

            fields, chunks, _ = MANIFESTS[name]
            store = RedisStore(redis_url, prefix=prefix, chunk_size=64)
            client = redis.Redis.from_url(redis_url)
            rkey = f"{prefix}:{record_key()}".encode()
            client.delete(rkey)
            if name == "key-holds-a-list":
                client.rpush(rkey, b"a", b"b")
            else:
                client.hset(rkey, mapping={k: str(v) for k, v in fields.items()})
                gen = str(fields.get("gen", "g1")).encode()
                for index, chunk in chunks.items():
                    client.set(rkey + b"\x00" + gen + b"\x00" + str(index).encode(), chunk)
            result = _child_load(store, {})
            store.close()
            client.close()
        print(json.dumps({"case": name, **result}), flush=True)


def _run_child(names: list[str], redis_url: str, prefix: str) -> dict[str, dict[str, Any]]:
    """Load each named case in a guarded child; a case that kills the child (a segfault) is
    reported as ``{"outcome": "died (status N)"}`` and the child restarts after it."""
    root = Path(__file__).resolve().parent.parent
    results: dict[str, dict[str, Any]] = {}
    pending = list(names)
    while pending:
        proc = subprocess.run(
            [sys.executable, "-m", "tests.test_fuzz", redis_url, prefix, *pending],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=240,
        )
        started = None
        for line in proc.stdout.splitlines():
            if not line.startswith("{"):
                continue  # a module printing on import (see "imported_this")
            entry = json.loads(line)
            started = entry["case"]
            if not entry.get("started"):
                results[started] = entry
        if proc.returncode == 0:
            break
        assert started is not None, f"the child failed to start:\n{proc.stderr[-3000:]}"
        results[started] = {"outcome": f"died (status {proc.returncode})", "message": ""}
        results[started]["message"] = proc.stderr[-1000:]
        pending = pending[pending.index(started) + 1 :]
    return results


@pytest.mark.timeout(300)
def test_hostile_codec_metadata_in_a_memory_limited_child(
    redis_url: str, redis_store_factory: Callable[..., Any]
) -> None:
    store = redis_store_factory()  # owns the key prefix (deleted at teardown)
    results = _run_child([*HOSTILE, *MANIFESTS], redis_url, store.prefix)
    problems = []
    for name, (_, _, allowed) in {**HOSTILE, **MANIFESTS}.items():
        got = results.get(name)
        if got is None:
            problems.append(f"{name}: no result")
            continue
        # 100 MB stored: json holds it as one str, then its digits as another.
        limit = 250 * MB if name == "json-100-mb-integer" else PEAK_LIMIT
        if got["outcome"] not in allowed:
            problems.append(f"{name}: {got['outcome']} {got['message']} (allowed: {allowed})")
        elif not (got["names_key"] and got["key_attr"]) and got["outcome"] != "CheckpointNotFound":
            problems.append(f"{name}: the error does not name the key: {got['message']}")
        elif got["peak"] > limit:
            problems.append(f"{name}: peak allocation {got['peak']} > {limit}")
        if got.get("imported_this"):
            problems.append(f"{name}: a record made the codec import the module 'this'")
    assert not problems, "\n".join(problems)
    assert results["numpy-strides-are-ignored"]["value"] == "array([1., 2.])"


# -- pickle allowlist (in process: after the fix nothing here runs code) ------------------------


def _plant_and_load(store: ckpt.Store, payload: bytes, **options: Any) -> BaseException:
    key = record_key()
    store.put(key, valid_record("pickle", None, [payload]))
    with pytest.raises(ckpt.SerializationError) as info:
        manager(store, **options).load(CTX, NODE)
    assert_names_key(info.value, key)
    return info.value


def test_pickle_allowlist_refuses_code_from_builtins(tmp_path: Path) -> None:
    canary = tmp_path / "pwned"
    code = f"open({str(canary)!r}, 'w').write('x')"
    payload = b"cbuiltins\neval\n(V" + code.encode("raw_unicode_escape") + b"\ntR."
    store = ckpt.MemoryStore()
    allowlists: list[list[str]] = [["json"], []]
    for allowed in allowlists:
        error = _plant_and_load(store, payload, pickle_modules=allowed)
        assert "builtins.eval" in str(error)
        assert not canary.exists()
    for name in ("getattr", "__import__", "exec", "open", "compile", "breakpoint"):
        _plant_and_load(store, f"cbuiltins\n{name}\n.".encode(), pickle_modules=["json"])
    # The canary works: naming builtins explicitly trusts all of it, and the record runs.
    store.put(record_key(), valid_record("pickle", None, [payload]))
    manager(store, pickle_modules=["builtins"]).load(CTX, NODE)
    assert canary.exists()


def test_pickle_allowlist_dotted_names_cannot_leave_the_module() -> None:
    # Protocol 4 resolves "os.getcwd" inside an allowed module that imported os.
    assert sys.modules[__name__].os is os
    name = __name__.encode()
    payload = (
        b"\x80\x04\x8c" + bytes([len(name)]) + name + b"\x8c\x09os.getcwd\x93)R."
    )  # SHORT_BINUNICODE module, SHORT_BINUNICODE name, STACK_GLOBAL, EMPTY_TUPLE, REDUCE
    error = _plant_and_load(ckpt.MemoryStore(), payload, pickle_modules=[__name__.split(".")[0]])
    assert "os.getcwd" in str(error)


def test_pickle_allowlist_still_loads_plain_data() -> None:
    import collections
    import datetime
    import decimal

    store = ckpt.MemoryStore()
    value = {
        "c": complex(1, 2),
        "r": range(3),
        "s": slice(1, 2),
        "t": (int, type(None), ValueError, KeyError),
        "o": collections.OrderedDict(a=1),
        "d": collections.defaultdict(list, {"k": [1]}),
        "q": collections.deque([1]),
        "dt": datetime.datetime(2026, 11, 22, tzinfo=datetime.timezone.utc),
        "dec": decimal.Decimal("1.5"),
        "set": {1, 2},
        "e": Ellipsis,
    }
    manager(store).save(CTX, NODE, value, codec="pickle")
    assert manager(store, pickle_modules=[]).load(CTX, NODE) == value


# -- hostile ids end to end on local, Redis and S3 --------------------------------------------

FRAGMENTS = ["..", ".", "/", "\\", "*", "?", "[", "]", ":", "%", "~", " ", "\x00", "\ud800"]
FRAGMENTS += ["a", "\u00e9", "\U0001f600", "{", "$", "\n", "%2F", "\udfff"]
any_id = st.one_of(
    st.text(alphabet=st.characters(exclude_categories=()), max_size=30),  # NUL and surrogates
    st.lists(st.sampled_from(FRAGMENTS), max_size=10).map("".join),
    st.tuples(st.sampled_from(FRAGMENTS), st.sampled_from([1000, 10_000])).map(
        lambda t: (t[0] * t[1])[:10_000]
    ),
)


@pytest.fixture(params=["local", "redis", "s3"])
def id_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, ckpt.Store]]:
    """``(backend, store)``; S3 gets few examples (each one is a dozen HTTP requests).
    (``test_keys.py`` also walks the local store's files: nothing lands outside its root.)"""
    if request.param == "local":
        store: ckpt.Store = ckpt.FsspecStore(str(tmp_path / "ids"), fsync=False)
    else:
        store = request.getfixturevalue(f"{request.param}_store_factory")()
    yield request.param, store
    store.close()


def _invalid_key(call: Callable[[], Any], *bad: str) -> None:
    with pytest.raises(ckpt.InvalidKey) as info:
        call()
    assert any(repr(v) in str(info.value) for v in bad if "\x00" in v), str(info.value)[:300]


def _check_ids(store: ckpt.Store, ns: str, run_id: str, corr: str, node: str) -> None:
    if "\x00" in ns:
        _invalid_key(lambda: ckpt.CheckpointManager(store, namespace=ns), ns)
        return
    mgr = ckpt.CheckpointManager(store, namespace=ns)
    ctx = ckpt.RunContext(run_id=run_id, correlation_id=corr)
    corr = ctx.correlation_id  # an empty correlation id means "the run's own"
    if "\x00" in run_id + corr + node:
        # Each scope's key is made of the namespace, its owner and the node: a NUL in any of
        # them refuses that write, naming the id; the other scope's write still works.
        for scope, owner in ((ckpt.Scope.CORRELATION, corr), (ckpt.Scope.RUN, run_id)):
            save = functools.partial(mgr.save, ctx, node, b"x", scope=scope)
            if "\x00" in owner + node:
                _invalid_key(save, owner, node)
                _invalid_key(lambda: mgr.load(ctx, node), run_id, corr, node)
            else:
                save()
        store.delete_prefix(keys.encode_component(ns) + "/")
        return
    mgr.save(ctx, node, b"corr", scope=ckpt.Scope.CORRELATION)
    mgr.save(ctx, node, b"run", scope=ckpt.Scope.RUN)
    assert mgr.load(ctx, node) == b"run"
    listed = mgr.list(ctx)
    assert sorted(i.scope.value for i in listed) == ["correlation", "run"]
    if "~" not in keys.encode_component(node) or node == "":  # not shortened: decodes exactly
        assert {i.node for i in listed} == {node}
    assert mgr.cleanup_correlation(corr) == 1
    assert mgr.load(ctx, node) == b"run"
    assert mgr.cleanup_run(run_id) == 1
    assert mgr.lookup(ctx, node) is None
    assert store.list(keys.encode_component(ns) + "/") == []


@pytest.mark.timeout(240)
def test_hostile_ids_round_trip_or_raise_invalid_key(id_store: tuple[str, ckpt.Store]) -> None:
    backend, store = id_store

    @settings(max_examples=6 if backend == "s3" else 40, deadline=None)
    @given(ns=any_id, run_id=any_id, corr=any_id, node=any_id)
    def check(ns: str, run_id: str, corr: str, node: str) -> None:
        _check_ids(store, ns, run_id, corr, node)

    check()


NEIGHBOURS = [":b", "*", "/..", "?", "[b]", "/b", "%3Ab", "%", "~", ".", "\\", " ", "\ud800"]


@pytest.mark.timeout(240)
def test_deleting_a_correlation_never_touches_its_neighbours(
    id_store: tuple[str, ckpt.Store],
) -> None:
    backend, store = id_store

    @settings(max_examples=3 if backend == "s3" else 15, deadline=None)
    @given(base=st.one_of(st.just("a"), any_id.filter(lambda s: "\x00" not in s)))
    def check(base: str) -> None:
        mgr = ckpt.CheckpointManager(store, namespace="nbr-" + uuid.uuid4().hex[:8])
        owners = [base, *(base + suffix for suffix in NEIGHBOURS)]
        for owner in owners:
            ctx = ckpt.RunContext(run_id=owner, correlation_id=owner)
            mgr.save(ctx, "node", owner.encode("utf-8", "surrogatepass"))
            mgr.save(ctx, "node", b"run", scope=ckpt.Scope.RUN)
        assert mgr.cleanup_correlation(base) == 1
        assert mgr.cleanup_run(base) == 1
        assert mgr.lookup(ckpt.RunContext(base), "node") is None
        for owner in owners[1:]:
            ctx = ckpt.RunContext(run_id=owner, correlation_id=owner)
            assert mgr.load(ctx, "node") == b"run", owner
            mgr.cleanup_run(owner)
            assert mgr.load(ctx, "node") == owner.encode("utf-8", "surrogatepass"), owner
        for owner in owners[1:]:
            mgr.cleanup_correlation(owner)

    check()


if __name__ == "__main__":
    _child_main(sys.argv[1:])
