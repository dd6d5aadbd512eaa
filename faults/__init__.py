"""ckpt's long-running fault tests (``make faults``; a fast tier of the same runs in ``make test``).

``python -m faults`` runs every scenario against real backends and prints a summary table; see
:mod:`faults.crash` for the crash-consistency harness.
"""

from .crash import Backend, CrashScenario, ScenarioResult, run_crash_scenario

__all__ = ["Backend", "CrashScenario", "ScenarioResult", "run_crash_scenario"]
