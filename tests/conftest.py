"""Shared pytest settings: quiet megatron-core's start-up warnings, keep threads bounded, tier the suite.

Tiers: ``slow`` marks what starts processes (every ``multiprocess`` test is ``slow`` too), end-to-end
scripts, Slurm and the GPU checks (every ``gpu`` test); ``python -m pytest -m "not slow" tests`` is the fast tier of the edit-test loop. At the
end of a run the tests that took over :data:`FAST_LIMIT_S` without the ``slow`` marker are listed (a list,
not a failure: a loaded machine must not fail a run), so the fast tier stays fast.
"""

import os
import warnings

os.environ.setdefault("OMP_NUM_THREADS", "2")
warnings.filterwarnings("ignore", message=".*Transformer Engine.*")
warnings.filterwarnings("ignore", message=".*Apex.*")

import pytest  # noqa: E402

FAST_LIMIT_S = 5.0
_SLOW_UNMARKED = pytest.StashKey[dict]()

pytest_plugins = ["tests.harness.fixtures"]


def pytest_configure(config: pytest.Config) -> None:
    """Start the tally of unmarked slow tests."""
    config.stash[_SLOW_UNMARKED] = {}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark multi-process tests and GPU checks ``slow``; skip the GPU checks where they cannot run, saying why.

    megatron-core is imported here, once, so its seconds of import are not charged to whichever test
    happens to need it first.
    """
    if items:
        import megatron.core  # noqa: F401
    for item in items:
        tiered = item.get_closest_marker("multiprocess") or item.get_closest_marker("gpu")
        if tiered and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu:
        return
    from tests.gpu.checks import cuda_missing

    why = cuda_missing()
    for item in gpu if why else []:
        item.add_marker(pytest.mark.skip(reason=why))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Add each phase's time to the item's total when the item is not marked ``slow``."""
    report = yield
    if not item.get_closest_marker("slow"):
        totals = item.config.stash[_SLOW_UNMARKED]
        totals[item.nodeid] = totals.get(item.nodeid, 0.0) + report.duration
    return report


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    """List the tests over FAST_LIMIT_S that lack the ``slow`` marker (setup, call and teardown together)."""
    over = sorted(((s, n) for n, s in config.stash[_SLOW_UNMARKED].items() if s > FAST_LIMIT_S), reverse=True)
    if not over:
        return
    terminalreporter.section(f"over {FAST_LIMIT_S:g} s without the slow marker")
    for seconds, nodeid in over:
        terminalreporter.write_line(f"{seconds:7.1f} s  {nodeid}")
