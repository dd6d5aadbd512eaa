"""``import ckpt_core`` stays light: no orchestrator, no optional backend, checked in a fresh
interpreter (this test process has imported everything already)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import ckpt_core as ckpt

FORBIDDEN = [
    "prefect",
    "dagster",
    "redis",
    "s3fs",
    "pyarrow",
    "cryptography",
    "ckpt_prefect",
    "ckpt_dagster",
]


def _modules_after(code: str) -> list[str]:
    script = textwrap.dedent(code) + textwrap.dedent(
        """
        import json, sys
        print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_import_ckpt_core_imports_no_optional_dependency() -> None:
    loaded = _modules_after("import ckpt_core")
    assert "ckpt_core" in loaded
    assert sorted(set(FORBIDDEN) & set(loaded)) == []


def test_plain_use_stays_light(tmp_path: object) -> None:
    # Saving and loading plain data on the memory and local stores, the decorator and a run
    # must not pull in any optional backend either.
    loaded = _modules_after(
        f"""
        import ckpt_core as ckpt

        @ckpt.checkpointed
        def step(x):
            return {{"x": x, "b": b"raw"}}

        for url in ("memory://light", {str(tmp_path)!r}):
            with ckpt.run("light", store=url):
                step(1)
            mgr = ckpt.CheckpointManager(url)
            ctx = ckpt.RunContext("r")
            mgr.save(ctx, "n", [1, None])
            assert mgr.load(ctx, "n") == [1, None]
        """
    )
    assert sorted(set(FORBIDDEN) & set(loaded)) == []


def test_public_names_are_exported() -> None:
    for name in ckpt.__all__:
        assert hasattr(ckpt, name), name
    errors = [
        ckpt.CheckpointNotFound,
        ckpt.CheckpointCorrupted,
        ckpt.SerializationError,
        ckpt.SchemaMismatch,
        ckpt.InvalidKey,
        ckpt.StoreUnavailable,
    ]
    assert all(issubclass(e, ckpt.CheckpointError) for e in errors)
    assert issubclass(ckpt.CheckpointWarning, UserWarning)
