"""ckpt benchmarks: every figure a ratio against a reference doing the same work, in the same run.

Run ``python -m benchmarks`` (``make bench``), or ``python -m benchmarks --quick`` for small sizes
and few repetitions. See docs/benchmarks.md for the scenarios, targets and a recorded run.
"""
