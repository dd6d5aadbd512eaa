"""Full disk: rounds of saving records of random sizes until the filesystem refuses one.

The store lives on a small tmpfs (8 MiB, 400 inodes) mounted for the scenario, so saves fail the
way they do on a full disk: mid-write for a large record, at file or directory creation once the
inodes run out. Each round saves records until one fails, then checks:

- the failing save raised ``StoreUnavailable`` (any other exception is a failure);
- no temp or partial file is left anywhere on the filesystem (every file is a record);
- every record saved so far, in this round and the earlier ones still kept, loads byte for byte
  (``records checked``), and the free space is what the records account for (no leaked blocks
  from a temp file that is unlinked but still open);

then deletes a random half of the records, so the next round has room again.

Mounting needs root. Without it, the rounds run in a child process whose ``RLIMIT_FSIZE`` makes
every record above 1 MiB fail with ``EFBIG`` halfway through its write (scenario
``full-disk/rlimit``): the same checks, minus the free-space accounting.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from .crash import ScenarioResult

KiB = 1 << 10
MiB = 1 << 20
NAMESPACE = "full-disk"
TMPFS_SIZE = 8 * MiB
TMPFS_INODES = 400
RLIMIT_BYTES = MiB
REPO_ROOT = Path(__file__).resolve().parent.parent
#: Record sizes and weights: small ones exhaust inodes, large ones fail mid-write.
SIZES = ((60, 6), (4 * KiB, 4), (64 * KiB, 3), (512 * KiB, 2), (2 * MiB + 5, 1))


def value_for(round_: int, index: int, size: int) -> bytes:
    head = f"{round_}/{index}/".encode()
    return head + random.Random(f"{round_}/{index}").randbytes(max(0, size - len(head)))


def _files(root: Path) -> set[str]:
    return {str(Path(d, f).relative_to(root)) for d, _, names in os.walk(root) for f in names}


def _unaccounted_bytes(root: Path) -> int:
    """Bytes the filesystem at ``root`` uses beyond what its files hold (on tmpfs: a file that
    was unlinked but is still open, such as a temp file a failed write forgot to close)."""
    st = os.statvfs(root)
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    held = sum(
        os.stat(os.path.join(d, f)).st_blocks * 512 for d, _, names in os.walk(root) for f in names
    )
    return used - held


def fill_rounds(
    store_root: Path, rounds: int, seed: int, result: ScenarioResult, *, check_space: bool = False
) -> None:
    """The rounds (see the module docstring), on a local store at ``store_root``; with
    ``check_space``, the filesystem at ``store_root.parent`` must hold nothing but records."""
    import ckpt_core as ckpt

    rng = random.Random(seed)
    mgr = ckpt.CheckpointManager(str(store_root), NAMESPACE)
    kept: dict[tuple[int, int], int] = {}  # (round, index) -> size
    sizes, weights = zip(*SIZES, strict=True)

    def fail(message: str) -> None:
        result.failures.append(f"{result.scenario}: {message}")

    def ctx(round_: int) -> ckpt.RunContext:
        return ckpt.RunContext(run_id="writer", correlation_id=f"round-{round_}")

    for round_ in range(rounds):
        error: BaseException | None = None
        for index in range(10_000):
            size = rng.choices(sizes, weights)[0]
            try:
                mgr.save(ctx(round_), f"r{index}", value_for(round_, index, size))
            except Exception as exc:
                error = exc
                break
            kept[(round_, index)] = size
        result.kills += 1
        if type(error) is not ckpt.StoreUnavailable:
            fail(
                f"round {round_}: the save that did not fit raised {error!r}, not StoreUnavailable"
            )
        elif "No space left" not in str(error) and "File too large" not in str(error):
            fail(f"round {round_}: the error does not say what ran out: {error}")

        expected = {"store/" + mgr.key_for(ctx(r), f"r{i}") for r, i in kept}
        extra = _files(store_root.parent) - expected
        if extra:
            result.debris_found += len(extra)
            fail(f"round {round_}: files left that are no records: {sorted(extra)[:5]}")
        if check_space and _unaccounted_bytes(store_root.parent) > 256 * KiB:
            fail(f"round {round_}: {_unaccounted_bytes(store_root.parent)} bytes used by no file")
        for (r, i), size in kept.items():
            try:
                loaded = mgr.load(ctx(r), f"r{i}")
            except Exception as exc:
                fail(f"round {round_}: r{i} of round {r} raised {type(exc).__name__}: {exc}")
                continue
            result.records_checked += 1
            if loaded != value_for(r, i, size):
                fail(f"round {round_}: r{i} of round {r} loaded different bytes")
        if len(result.failures) > 20:
            return
        for r, i in rng.sample(sorted(kept), len(kept) // 2):
            mgr.store.delete(mgr.key_for(ctx(r), f"r{i}"))
            del kept[(r, i)]


def _mount_tmpfs(path: Path) -> str | None:
    """Mount a tmpfs at ``path``; ``None`` on success, else why not."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return "not root"
    options = f"size={TMPFS_SIZE},nr_inodes={TMPFS_INODES}"
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "ckpt-full-disk", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    return None if done.returncode == 0 else done.stderr.strip() or "mount failed"


def run_full_disk_scenario(
    rounds: int, workdir: str | Path | None = None, *, seed: int = 20261123
) -> ScenarioResult:
    """Run the rounds on a tmpfs (or, without the right to mount, under ``RLIMIT_FSIZE`` in a
    child process); never raises for a found failure (it is in ``result.failures``)."""
    own = workdir is None
    root = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="ckpt-disk-"))
    started = time.monotonic()
    mount = root / "tmpfs"
    mount.mkdir(parents=True, exist_ok=True)
    try:
        if _mount_tmpfs(mount) is None:
            result = ScenarioResult("full-disk/tmpfs")
            try:
                fill_rounds(mount / "store", rounds, seed, result, check_space=True)
            finally:
                if subprocess.run(["umount", str(mount)], check=False).returncode != 0:
                    subprocess.run(["umount", "-l", str(mount)], check=False)
        else:
            result = _rlimit_rounds(root / "rlimit" / "store", rounds, seed)
    finally:
        if own:
            shutil.rmtree(root, ignore_errors=True)
    result.seconds = time.monotonic() - started
    return result


def _rlimit_rounds(store_root: Path, rounds: int, seed: int) -> ScenarioResult:
    store_root.parent.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "faults.full_disk", "--child", str(store_root), str(rounds)]
    child = subprocess.run(
        [*args, str(seed)], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    try:
        return ScenarioResult(**json.loads(child.stdout.strip().splitlines()[-1]))
    except (ValueError, IndexError, TypeError):
        result = ScenarioResult("full-disk/rlimit")
        result.failures.append(f"full-disk/rlimit: the child failed: {child.stderr[-2000:]}")
        return result


def _child(store_root: str, rounds: str, seed: str) -> None:
    import resource
    import signal

    # Without this, a write past the limit kills the process instead of failing with EFBIG.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (RLIMIT_BYTES, RLIMIT_BYTES))
    result = ScenarioResult("full-disk/rlimit")
    fill_rounds(Path(store_root), int(rounds), int(seed), result)
    print(json.dumps(asdict(result)))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"] and len(sys.argv) == 5:
        _child(*sys.argv[2:])
    else:
        sys.exit(
            "usage: python -m faults.full_disk --child STORE ROUNDS SEED (run python -m faults)"
        )
