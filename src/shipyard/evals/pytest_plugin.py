"""The pytest plugin (entry point ``pytest11: shipyard``): eval cases as tests in your CI.

- ``@pytest.mark.shipyard_dataset("name", version=None, split=None, limit=None)`` runs the
  test once per item of a dataset version; the test takes the item as ``case``.
- fixture ``shipyard_gateway``: a :class:`shipyard.Gateway` for ``--shipyard-config``
  (or ``$SHIPYARD_CONFIG``), one per test session.
- options ``--shipyard-config FILE``, ``--shipyard-store URL`` (where datasets live;
  default the config's store).
- the terminal summary counts the ``shipyard.testing`` checks that passed and failed.

It does nothing unless a test uses the marker or the fixture.
"""

from __future__ import annotations

import os
from typing import Any

import pytest


def pytest_addoption(parser: Any) -> None:
    group = parser.getgroup("shipyard", "shipyard evals")
    group.addoption("--shipyard-config", default=None, help="shipyard config for the shipyard_gateway fixture")
    group.addoption("--shipyard-store", default=None, help="store URL with the datasets of @shipyard_dataset")


def pytest_configure(config: Any) -> None:
    config.addinivalue_line("markers", "shipyard_dataset(name, version=None, split=None, limit=None): run the test "
                                       "once per item of a shipyard dataset (argument 'case')")


def _config_path(config: Any) -> str | None:
    return config.getoption("--shipyard-config") or os.environ.get("SHIPYARD_CONFIG") or None


def _store_url(config: Any) -> str:
    url = config.getoption("--shipyard-store") or os.environ.get("SHIPYARD_STORE")
    if url:
        return url
    from shipyard.cli import _store_url as from_config

    return from_config(_config_path(config))


def pytest_generate_tests(metafunc: Any) -> None:
    marker = metafunc.definition.get_closest_marker("shipyard_dataset")
    if marker is None:
        return
    if "case" not in metafunc.fixturenames:
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: @shipyard_dataset needs a 'case' argument")
    name = marker.args[0] if marker.args else marker.kwargs.get("name")
    version, split, limit = (marker.kwargs.get(k) for k in ("version", "split", "limit"))
    from shipyard.evals.datasets import Datasets
    from shipyard.store import open_store

    store = open_store(_store_url(metafunc.config))
    if store is None:
        raise pytest.UsageError("@shipyard_dataset needs a store (--shipyard-store URL)")
    try:
        items = []
        for item in Datasets(store).iter_items(name, version, split):
            if limit is not None and len(items) >= limit:
                break
            items.append(item)
    finally:
        store.close()
    metafunc.parametrize("case", items, ids=[str(i["id"]) for i in items])


@pytest.fixture(scope="session")
def shipyard_gateway(pytestconfig: Any) -> Any:
    from shipyard import Gateway

    gw = Gateway(_config_path(pytestconfig))
    yield gw
    gw.close()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    import sys

    testing = sys.modules.get("shipyard.testing")
    if testing is None or not testing.STATS["checks"]:
        return
    s = testing.STATS
    terminalreporter.write_sep("-", "shipyard evals")
    terminalreporter.write_line(f"{s['checks']} checks: {s['passed']} passed, {s['failed']} failed, "
                                f"{s['errors']} errors")
