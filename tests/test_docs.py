"""The docs are part of the product: the site builds with ``mkdocs build --strict``, every code
block of the quickstart runs, and every example in ``examples/`` is executed by some test."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .servers import IN_CI

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
#: Examples and the test that runs each (the quickstart is run here).
EXAMPLES = {
    "quickstart.py": "tests/test_docs.py",
    "prefect": "tests/integration/test_prefect.py",
    "dagster": "tests/integration/test_dagster_config.py",
}


def code_blocks(page: Path) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(page.read_text())]


def _mkdocs() -> list[str]:
    try:
        import mkdocs  # noqa: F401
        import mkdocstrings  # noqa: F401
    except ImportError:
        if IN_CI:
            pytest.fail("mkdocs is not installed: pip install -e '.[docs]' (in the test extra)")
        pytest.skip("mkdocs is not installed: pip install -e '.[docs]'")
    return [sys.executable, "-m", "mkdocs"]


def test_site_builds_strict_without_warnings(tmp_path: Path) -> None:
    out = subprocess.run(
        [*_mkdocs(), "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "WARNING" not in out.stderr, out.stderr
    built = tmp_path / "site"
    for page in ("quickstart", "cli", "security", "plugins", "faq", "api", "benchmarks"):
        assert (built / page / "index.html").is_file(), page
    api = (built / "api" / "index.html").read_text()
    # The reference is generated from docstrings, not written by hand.
    assert "CheckpointManager" in api and "Save and load step outputs" in api


def test_every_page_is_in_the_nav() -> None:
    nav = (REPO / "mkdocs.yml").read_text()
    for page in DOCS.glob("*.md"):
        assert f" {page.name}" in nav, f"{page.name} is not in mkdocs.yml's nav"


def test_quickstart_code_blocks_run_in_order(tmp_path: Path) -> None:
    """Python blocks share one namespace (like a reader's session); bash blocks run in a shell
    where ``ckpt`` is the CLI of this interpreter, in the same empty directory."""
    blocks = code_blocks(DOCS / "quickstart.md")
    assert [lang for lang, _ in blocks].count("python") >= 3
    namespace: dict[str, object] = {"__name__": "quickstart_doc"}
    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:
        for lang, code in blocks:
            if lang == "python":
                exec(compile(code, "docs/quickstart.md", "exec"), namespace)
            elif lang in ("bash", "sh", "console"):
                shell = f'ckpt() {{ "{sys.executable}" -m ckpt_core.cli "$@"; }}\nset -e\n{code}'
                out = subprocess.run(
                    ["bash", "-c", shell],
                    capture_output=True,
                    text=True,
                    timeout=120,
                    env={**os.environ, "COLUMNS": "100"},
                )
                assert out.returncode == 0, f"{code}\n{out.stdout}\n{out.stderr}"
                if "ckpt ls" in code:
                    assert "extract" in out.stdout and "nightly-2026-11-22" in out.stdout
            else:
                pytest.fail(f"quickstart block in {lang or 'no language'} is not executed: {code}")
    finally:
        os.chdir(cwd)


def test_quickstart_example_fails_then_resumes(tmp_path: Path) -> None:
    script = REPO / "examples" / "quickstart.py"
    store = str(tmp_path / "store")
    first = subprocess.run(
        [sys.executable, str(script), "--store", store, "--fresh", "--fail-at", "aggregate"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert first.returncode == 1, first.stdout + first.stderr
    assert "FAILED: simulated crash in aggregate" in first.stdout
    second = subprocess.run(
        [sys.executable, str(script), "--store", store],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert second.returncode == 0, second.stdout + second.stderr
    statuses = {
        line.split()[0]: line.split()[1] for line in second.stdout.splitlines()[:4] if line.strip()
    }
    assert statuses == {
        "extract": "loaded",
        "clean": "loaded",
        "aggregate": "computed",
        "report": "computed",
    }, second.stdout


def test_every_example_is_run_by_a_test() -> None:
    examples = {p.name for p in (REPO / "examples").iterdir() if not p.name.startswith((".", "_"))}
    assert examples == set(EXAMPLES), "a new example needs a test that runs it"
    for name, test_file in EXAMPLES.items():
        text = (REPO / test_file).read_text()
        assert f"examples/{name}" in text or f'"examples" / "{name}"' in text, (name, test_file)


def test_cli_page_shows_real_output() -> None:
    page = (DOCS / "cli.md").read_text()
    for command in ("ckpt ls", "ckpt show", "ckpt rm", "ckpt gc", "ckpt verify", "ckpt stats"):
        assert command in page
    assert "┏" in page  # a pasted table, not a made-up one


def test_docs_never_show_a_real_looking_secret() -> None:
    for page in DOCS.glob("*.md"):
        assert not re.search(r"AKIA[0-9A-Z]{16}", page.read_text()), page.name


def test_plugin_page_store_passes_the_conformance_suite(tmp_path: Path) -> None:
    """The store and the test module on the plugin page are real: the suite passes on them."""
    blocks = [code for lang, code in code_blocks(DOCS / "plugins.md") if lang == "python"]
    store_code, test_code = blocks
    package = tmp_path / "my_package"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "store.py").write_text(store_code)
    (tmp_path / "test_dict_store.py").write_text(test_code)
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_dict_store.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    summary = out.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary, summary
