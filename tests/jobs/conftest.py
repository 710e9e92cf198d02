"""One single-node run of every stage on the tiny config, shared by the tests that check it
and the test that runs the same config on a multi-node cluster and compares."""

from __future__ import annotations

import contextlib
import io
from types import SimpleNamespace

import pytest

from tests.helpers import pipeline


@pytest.fixture(scope="session")
def single_node_run(ray_session, tmp_path_factory):
    run = tmp_path_factory.mktemp("single-node") / "run"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        results = pipeline.full(["--run-dir", str(run), *pipeline.TINY])
    return SimpleNamespace(run=run, results=results, printed=printed.getvalue())
