"""Fixtures of the GPU checks: the layer implementation under test, the imported Mistral the TE
checks share, and each check's record of what it measured (tests/gpu/checks.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.gpu.checks import Figures, record_setup_outcome, smoke, te_impl, te_missing

_REPORTS = pytest.StashKey[dict]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Keep each phase's report on the item, so a check's record can state its outcome."""
    report = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    record_setup_outcome(item, report)
    return report


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """A check's record exists from its start: a part killed in a long module fixture still lists it."""
    if "figures" in getattr(item, "fixturenames", ()):
        Figures(item, lambda *_: None).start()


@pytest.fixture
def figures(request: pytest.FixtureRequest, record_property) -> Iterator[Figures]:
    """This check's record of measured figures; its outcome is added when the test ends."""
    record = Figures(request.node, record_property)
    yield record
    reports = request.node.stash.get(_REPORTS, {})
    record.finish(reports.get("call") or reports.get("setup"))


@pytest.fixture(scope="session")
def transformer_engine() -> str:
    """The implementation standing as TE: "te", or "local" on the smoke run; skips where TE cannot run."""
    why = te_missing()
    if why:
        pytest.skip(why)
    return te_impl()


@pytest.fixture(scope="session")
def imported_mistral(tmp_path_factory: pytest.TempPathFactory, transformer_engine: str) -> str:
    """A random HF Mistral imported once: the weights both TE checks start from."""
    from tests.gpu.models import import_small_mistral

    return import_small_mistral(tmp_path_factory.mktemp("mistral"), smoke())
