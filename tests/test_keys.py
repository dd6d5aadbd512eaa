"""Key encoding: any string is one safe component that cannot escape, collide or glob.

Property-based (hypothesis) over hostile ids: separators, dots, glob characters, ``%``/``~`` (the
encoding's own escape characters), NUL-free unicode including lone surrogates, and very long ids.
"""

from __future__ import annotations

import os
import re
import tempfile
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import ckpt_core as ckpt
from ckpt_core import keys
from ckpt_core.keys import MAX_COMPONENT, decode_component, encode_component

SAFE = re.compile(r"^[A-Za-z0-9_.%~-]+$")

# Fragments that have broken path/glob handling somewhere, glued together by hypothesis.
# fmt: off
HOSTILE = [
    "..", ".", "/", "\\", "*", "?", "[", "]", ":", "%", "%2F", "~", " ", "\n", "\t", "a", "é",
    "日本", "\U0001f600", "\ud800", "\udfff", "%25", "~0", ".tmp", "-", "_", "{", "}", "$",
]
# fmt: on
# Any NUL-free text, lone surrogates included (hypothesis excludes category Cs by default).
any_text = st.text(alphabet=st.characters(exclude_characters="\x00", exclude_categories=()))
hostile_text = st.lists(st.sampled_from(HOSTILE), max_size=12).map("".join)
long_text = st.text(
    alphabet=st.characters(exclude_characters="\x00", exclude_categories=()),
    min_size=MAX_COMPONENT - 5,
    max_size=4 * MAX_COMPONENT,
)
ids = st.one_of(any_text, hostile_text, long_text)
fast = settings(max_examples=200, deadline=None)


@fast
@given(ids)
def test_encoding_is_one_safe_component(value: str) -> None:
    encoded = encode_component(value)
    assert SAFE.match(encoded), encoded
    assert not encoded.startswith(".")
    assert encoded not in (".", "..")
    assert "/" not in encoded and "\\" not in encoded
    assert len(encoded) <= MAX_COMPONENT
    # The store layer accepts it as a key component.
    ckpt.stores.base.validate_key(encoded)


@fast
@given(st.lists(ids, min_size=2, max_size=8, unique=True))
def test_encoding_is_injective(values: list[str]) -> None:
    encoded = [encode_component(v) for v in values]
    assert len(set(encoded)) == len(values), list(zip(values, encoded, strict=True))


@fast
@given(ids, st.sampled_from(["", ":b", "*", ":", "/b", "?", "[b]", "%", "~", ".", "%3Ab", " "]))
def test_prefixes_and_suffixes_never_collide(value: str, suffix: str) -> None:
    assume(suffix)
    assert encode_component(value) != encode_component(value + suffix)


@fast
@given(st.one_of(any_text, hostile_text))
def test_decode_inverts_plain_components(value: str) -> None:
    encoded = encode_component(value)
    assume(value == "" or "~" not in encoded)  # not shortened
    assert decode_component(encoded) == value


@fast
@given(long_text)
def test_long_ids_are_shortened_readably(value: str) -> None:
    encoded = encode_component(value)
    if "~" not in encoded:
        assert decode_component(encoded) == value  # short enough to stay plain
        return
    head, _, digest = encoded.rpartition("~")
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert "~" not in head
    assert not re.search(r"%[0-9A-F]?$", head), "an escape was cut in half"
    assert decode_component(encoded).endswith("…")


@fast
@given(st.text())
def test_decode_never_raises_on_foreign_names(name: str) -> None:
    # parse_record_key decodes whatever a store lists, including files ckpt did not write.
    assert isinstance(decode_component(name), str)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", "~"),
        (".", "%2E"),
        ("..", "%2E."),
        (".hidden", "%2Ehidden"),
        ("a.b", "a.b"),
        ("a/b", "a%2Fb"),
        ("a:b", "a%3Ab"),
        ("a*", "a%2A"),
        ("%", "%25"),
        ("~", "%7E"),
        ("é", "%C3%A9"),
        ("nightly-2026-11-22", "nightly-2026-11-22"),
    ],
)
def test_known_encodings(value: str, expected: str) -> None:
    assert encode_component(value) == expected
    assert decode_component(expected) == value


def test_lone_surrogates_round_trip() -> None:
    assert decode_component(encode_component("x\ud800y")) == "x\ud800y"
    # A surrogate pair written as two code points is not the same id as the astral character.
    assert encode_component("\ud83d\ude00") != encode_component("\U0001f600")


def test_malformed_escapes_decode_literally() -> None:
    assert decode_component("%ZZ") == "%ZZ"
    assert decode_component("abc%") == "abc%"
    assert decode_component("abc%4") == "abc%4"
    assert decode_component("%FF") == "\ufffd"  # not UTF-8: replaced, never raised


@pytest.mark.parametrize("bad", ["a\x00b", "\x00"])
def test_nul_is_refused_naming_the_value(bad: str) -> None:
    with pytest.raises(ckpt.InvalidKey, match="NUL"):
        encode_component(bad)


@pytest.mark.parametrize("bad", [1, None, b"bytes", 1.5])
def test_non_str_ids_are_refused(bad: object) -> None:
    with pytest.raises(ckpt.InvalidKey, match=type(bad).__name__):
        encode_component(bad)  # type: ignore[arg-type]


def test_record_key_layout_and_parse() -> None:
    key = keys.record_key("etl/x", "correlation", "job:7", "../node")
    assert key == "etl%2Fx/corr/job%3A7/%2E.%2Fnode"
    assert keys.parse_record_key(key) == ("etl/x", "correlation", "job:7", "../node")
    assert keys.scope_prefix("ns", "run", "r") == "ns/run/r/"
    assert keys.parse_record_key("not/a/ckpt-key") is None
    assert keys.parse_record_key("a/other/b/c") is None


@given(st.lists(ids, min_size=4, max_size=4))
@fast
def test_cached_record_keys_are_the_keys_built_afresh(parts: list[str]) -> None:
    ns, owner, node, other = parts
    built = keys.scope_prefix(ns, "run", owner) + encode_component(node)
    assert keys.record_key(ns, "run", owner, node) == built
    assert keys.record_key(ns, "run", owner, node) == built  # from the cache
    assert keys.record_key(ns, "run", other, node) == keys.scope_prefix(
        ns, "run", other
    ) + encode_component(node)


class _Id(str):
    pass


@pytest.mark.parametrize("bad", [1, None, b"bytes", ["list"]])
def test_record_keys_of_non_str_ids_are_refused_not_cached(bad: object) -> None:
    for position in range(3):
        parts: list[Any] = ["ns", "owner", "node"]
        parts[position] = bad
        with pytest.raises(ckpt.InvalidKey):
            keys.record_key(parts[0], "correlation", parts[1], parts[2])


def test_record_keys_of_str_subclasses_encode_their_text() -> None:
    assert keys.record_key(_Id("ns"), "run", _Id("r/1"), _Id("n")) == "ns/run/r%2F1/n"


def test_the_record_key_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keys, "_RECORD_KEYS_CACHED", 8)
    monkeypatch.setattr(keys, "_record_keys", {})
    for i in range(50):
        assert keys.record_key("ns", "correlation", "c", f"node-{i}") == f"ns/corr/c/node-{i}"
        assert len(keys._record_keys) <= 8


def test_escape_glob() -> None:
    assert keys.escape_glob("a*b?[c]\\") == "a\\*b\\?\\[c\\]\\\\"


def test_bad_namespace_fails_at_construction() -> None:
    with pytest.raises(ckpt.InvalidKey):
        ckpt.CheckpointManager(ckpt.MemoryStore(), namespace="a\x00")


# -- stores given hostile ids ------------------------------------------------------------------


def _files_under(path: str) -> set[str]:
    return {
        os.path.join(directory, name)
        for directory, dirs, files in os.walk(path)
        for name in files + dirs
    }


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ns=ids, run_id=ids, corr=ids, node=ids)
def test_local_store_never_writes_outside_its_root(
    ns: str, run_id: str, corr: str, node: str
) -> None:
    with tempfile.TemporaryDirectory() as parent:
        root = os.path.join(parent, "root")
        sibling = os.path.join(parent, "sibling")
        os.mkdir(sibling)
        mgr = ckpt.CheckpointManager(ckpt.FsspecStore(root, fsync=False), namespace=ns)
        ctx = ckpt.RunContext(run_id=run_id, correlation_id=corr)
        mgr.save(ctx, node, b"corr", scope=ckpt.Scope.CORRELATION)
        mgr.save(ctx, node, b"run", scope=ckpt.Scope.RUN)

        everything = _files_under(parent)
        outside = {p for p in everything if p != root and not p.startswith(root + os.sep)}
        assert outside == {sibling}
        assert mgr.load(ctx, node) == b"run"  # RUN scope first
        listed = mgr.list(ctx)
        assert sorted(i.scope.value for i in listed) == ["correlation", "run"]
        if node == "" or "~" not in encode_component(node):
            assert {i.node for i in listed} == {node}
        assert mgr.finish(ctx, succeeded=True) == 2
        assert mgr.lookup(ctx, node) is None


@pytest.fixture(params=["memory", "local"])
def store(request: pytest.FixtureRequest, tmp_path: object) -> ckpt.Store:
    if request.param == "memory":
        return ckpt.MemoryStore()
    return ckpt.FsspecStore(f"{tmp_path}/store", fsync=False)


NEIGHBOURS = ["a:b", "a*", "a?", "a[b]", "a/b", "a\\b", "a%3Ab", "a%", "a~", "a.", "ab", "a b", "A"]


@pytest.mark.parametrize("scope", [ckpt.Scope.RUN, ckpt.Scope.CORRELATION])
def test_cleanup_of_a_never_touches_its_neighbours(store: ckpt.Store, scope: ckpt.Scope) -> None:
    mgr = ckpt.CheckpointManager(store, namespace="ns")
    for owner in ["a", *NEIGHBOURS]:
        ctx = ckpt.RunContext(run_id=owner, correlation_id=owner)
        mgr.save(ctx, "step", owner.encode(), scope=scope)
    cleanup = mgr.cleanup_run if scope is ckpt.Scope.RUN else mgr.cleanup_correlation
    assert cleanup("a") == 1
    assert mgr.lookup(ckpt.RunContext("a"), "step") is None
    for owner in NEIGHBOURS:
        assert mgr.load(ckpt.RunContext(run_id=owner), "step") == owner.encode(), owner


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(ids, min_size=2, max_size=6, unique=True))
def test_distinct_ids_never_share_records(store: ckpt.Store, owners: list[str]) -> None:
    mgr = ckpt.CheckpointManager(store, namespace="iso")
    for i, owner in enumerate(owners):
        mgr.save(ckpt.RunContext(run_id=owner), owners[-1 - i], i)
    for i, owner in enumerate(owners):
        assert mgr.load(ckpt.RunContext(run_id=owner), owners[-1 - i]) == i
    for owner in owners:
        mgr.cleanup_correlation(owner)
    assert store.list("") == []
