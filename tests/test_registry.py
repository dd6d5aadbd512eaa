"""``open_store``: URL scheme → store, built-ins, ``register_store`` and the ``ckpt.stores``
entry-point group (a real installed-distribution layout on ``sys.path``, not a mock)."""

from __future__ import annotations

import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ckpt_core import CheckpointWarning, FsspecStore, MemoryStore, StoreConfigError, open_store
from ckpt_core.stores import registry
from ckpt_core.stores.registry import register_store, registered_stores


@pytest.fixture(autouse=True)
def clean_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts from the built-in bindings, with entry points not yet read."""
    saved = dict(registry._registry)
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    yield
    registry._registry.clear()
    registry._registry.update(saved)


PLUGIN = textwrap.dedent(
    """
    from ckpt_core import MemoryStore

    class PluginStore(MemoryStore):
        opened = []

        @classmethod
        def from_url(cls, url, **options):
            store = cls(url.split("://", 1)[1])
            store.options = options
            cls.opened.append(url)
            return store

    class NotAStore:
        def __init__(self, url, **options):
            self.url = url
    """
)


def install_plugin(root: Path, module: str, entry_points: dict[str, str]) -> None:
    """Lay out ``module`` plus a dist-info with ``ckpt.stores`` entry points under ``root``."""
    (root / f"{module}.py").write_text(PLUGIN)
    dist = root / f"{module.replace('_', '-')}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n")
    lines = "\n".join(f"{name} = {target}" for name, target in entry_points.items())
    (dist / "entry_points.txt").write_text(f"[ckpt.stores]\n{lines}\n")


# -- built-ins -------------------------------------------------------------------------------------


def test_builtin_schemes(tmp_path: Path) -> None:
    first = open_store("memory://shared-name")
    assert isinstance(first, MemoryStore) and open_store("memory://shared-name") is first
    assert open_store("memory://other") is not first

    local = open_store(str(tmp_path / "store"))
    assert isinstance(local, FsspecStore) and local.local
    as_url = open_store(f"file://{tmp_path}/store")
    assert isinstance(as_url, FsspecStore) and as_url.local

    from ckpt_core.stores.redis import RedisStore

    for url in ("redis://127.0.0.1:1/0", "rediss://h:1/0", "unix:///tmp/none.sock"):
        assert isinstance(open_store(url), RedisStore), url  # opening does no IO

    assert isinstance(open_store("s3://bucket/prefix", anon=True), FsspecStore)


def test_an_opened_store_passes_through_but_refuses_options() -> None:
    store = MemoryStore()
    assert open_store(store) is store
    with pytest.raises(TypeError, match="already opened"):
        open_store(store, ttl=3)


def test_memory_urls_take_no_options() -> None:
    with pytest.raises(StoreConfigError, match=r"memory:// stores take no options, got \['ttl'\]"):
        open_store("memory://x", ttl=3)


@pytest.mark.parametrize("url", ["", None, 3])
def test_a_missing_url_is_a_config_error(url: object) -> None:
    with pytest.raises(StoreConfigError, match="non-empty string"):
        open_store(url)  # type: ignore[arg-type]


def test_an_unknown_scheme_goes_to_fsspec_and_fails_naming_the_url() -> None:
    with pytest.raises(StoreConfigError, match=r"cannot open nosuchproto://x/y"):
        open_store("nosuchproto://x/y")


def test_errors_never_show_the_password() -> None:
    register_store("broken", "no_such_module_for_ckpt:Store", hint="pip install ckpt-broken")
    with pytest.raises(StoreConfigError) as info:
        open_store("broken://user:hunter2@host/x")
    assert "hunter2" not in str(info.value)
    assert "broken://user:***@host/x" in str(info.value)
    assert "install it with pip install ckpt-broken" in str(info.value)


# -- register_store --------------------------------------------------------------------------------


def test_register_store_binds_a_scheme_and_passes_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = f"ckpt_plugin_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    register_store("Mine", f"{module}:PluginStore")
    assert registered_stores["mine"] == (f"{module}:PluginStore", "")
    store = open_store("MINE://bucket", color="blue")
    assert type(store).__name__ == "PluginStore" and store.options == {"color": "blue"}  # type: ignore[attr-defined]
    assert sys.modules[module].PluginStore.opened == ["MINE://bucket"]


def test_rebinding_a_taken_scheme_needs_replace() -> None:
    with pytest.raises(ValueError, match=r"'redis' is already bound to ckpt_core.stores.redis"):
        register_store("redis", "elsewhere:Store")
    register_store("redis", "ckpt_core.stores.redis:RedisStore")  # same target: fine
    register_store("redis", "elsewhere:Store", replace=True)
    assert registered_stores["redis"][0] == "elsewhere:Store"


@pytest.mark.parametrize("scheme", ["", "s3://", "1abc", "has space", "a/b"])
def test_register_store_refuses_malformed_schemes(scheme: str) -> None:
    with pytest.raises(ValueError, match="is not a URL scheme"):
        register_store(scheme, "pkg.mod:Store")


@pytest.mark.parametrize("target", ["pkg.mod", ":Store", "pkg.mod:"])
def test_register_store_refuses_malformed_targets(target: str) -> None:
    with pytest.raises(ValueError, match=r"must look like 'package\.module:ClassName'"):
        register_store("fine", target)


def test_registered_stores_is_read_only() -> None:
    with pytest.raises(TypeError):
        registered_stores["x"] = ("a:b", "")  # type: ignore[index]


def test_a_target_that_is_not_a_store_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = f"ckpt_plugin_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    register_store("odd", f"{module}:NotAStore")
    with pytest.raises(StoreConfigError, match="returned NotAStore for odd://, not a ckpt Store"):
        open_store("odd://x")
    register_store("gone", f"{module}:Missing")
    with pytest.raises(StoreConfigError, match="has no attribute 'Missing'"):
        open_store("gone://x")


# -- entry points ----------------------------------------------------------------------------------


def test_an_entry_point_plugin_is_found_lazily(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = f"ckpt_plugin_{uuid.uuid4().hex[:8]}"
    install_plugin(tmp_path, module, {"plugstore": f"{module}:PluginStore"})
    monkeypatch.syspath_prepend(str(tmp_path))
    # Built-in schemes never read entry points, and nothing is imported before it is needed.
    open_store("memory://no-entry-points")
    assert registry._entry_points_loaded is False
    store = open_store("plugstore://bucket/prefix", ttl=9)
    assert registry._entry_points_loaded is True
    assert type(store).__name__ == "PluginStore"
    assert store.options == {"ttl": 9}  # type: ignore[attr-defined]
    assert registered_stores["plugstore"][0] == f"{module}:PluginStore"


def test_an_entry_point_cannot_take_over_a_builtin_scheme(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = f"ckpt_plugin_{uuid.uuid4().hex[:8]}"
    install_plugin(
        tmp_path,
        module,
        {"redis": f"{module}:PluginStore", "other": f"{module}:PluginStore"},
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.warns(CheckpointWarning, match=r"ignoring the ckpt.stores entry point redis"):
        store = open_store("other://x")
    assert type(store).__name__ == "PluginStore"
    assert registered_stores["redis"][0] == "ckpt_core.stores.redis:RedisStore"


def test_a_broken_entry_point_names_its_distribution(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = f"ckpt_plugin_{uuid.uuid4().hex[:8]}"
    install_plugin(tmp_path, module, {"brk": f"{module}_missing:Store"})
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(StoreConfigError, match=rf"No module named '{module}_missing'.*{module}"):
        open_store("brk://x")
