"""The sandbox's own machinery: the plain-data codec, foreseen calls, the template's warm-up,
the filesystem view, the layer report and fail-closed start."""

from __future__ import annotations

import math
import socket
import typing

import pytest

from bdc_ray.config import SandboxLayer
from bdc_ray.data.problems import function_problem
from bdc_ray.sandbox import Limits, Sandbox, checker, protocol
from bdc_ray.sandbox.supervisor import SandboxUnavailable

ADD = function_problem(
    "t/add",
    'def add(a, b):\n    """a + b"""\n',
    "add",
    "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(2, 2) == 4\n",
)


def test_the_configs_layer_names_are_the_sandboxs():
    assert typing.get_args(SandboxLayer) == protocol.LAYERS


@pytest.mark.parametrize(
    "value",
    [0, -5, 2**80, -(2**70), 1.5, -0.0, math.inf, "x", b"\x00\xff", None, True, 3 + 4j,
     [1, (2, 3)], {"a": [1], (1, 2): {3}}, frozenset({1, "a"}), [[[]]], {1: None}],
)  # fmt: skip
def test_plain_data_round_trips_with_its_types(value):
    back = protocol.decode(protocol.encode(value))
    assert back == value and type(back) is type(value)
    if isinstance(value, list) and value:
        assert type(back[-1]) is type(value[-1])


def test_nan_round_trips_and_deep_or_foreign_values_are_refused():
    assert math.isnan(protocol.decode(protocol.encode(math.nan)))
    deep: list = []
    for _ in range(protocol.MAX_DEPTH + 2):
        deep = [deep]
    with pytest.raises(TypeError):
        protocol.encode(deep)
    with pytest.raises(TypeError):
        protocol.encode(object())
    for bad in (["l", ["?", 1]], ["d", [1]], {"a": 1}, ["zz"], [], ["d", [[1], 2]], ["i", 5]):
        with pytest.raises(protocol.ChannelError):
            protocol.decode(bad)
    nested = ["l"]
    for _ in range(protocol.MAX_DEPTH + 2):
        nested = ["l", nested]
    with pytest.raises(protocol.ChannelError):
        protocol.decode(nested)


def test_a_reader_refuses_an_oversized_message_before_reading_it():
    a, b = socket.socketpair()
    with a, b:
        a.sendall((10**9).to_bytes(4, "big") + b"{}")
        with pytest.raises(protocol.ChannelError, match="over the limit"):
            protocol.Reader(b, 1 << 20).recv()


def test_each_tests_first_call_is_foreseen_and_a_changed_one_goes_live():
    tests = (
        ("assert candidate(1, 2) == 3", ()),
        ("assert candidate(x, 1) == x + 1", ("import random", "x = random.randint(0, 10**9)")),
        ("assert True", ()),
    )
    src = checker.compiled("", ADD.prompt, tests)
    calls = checker.record(src, "add", checker.helpers(src, "add"))
    assert calls[0] == {"call": "add", "args": ["t", 1, 2], "kwargs": ["d"], "id": 0}
    assert calls[1] is not None and calls[2] is None
    with Sandbox(concurrency=1) as sb:
        from bdc_ray.data import TestCase

        cases = [TestCase("assert", code=c, setup=s) for c, s in tests]
        r = sb.check_function(ADD.prompt + "    return a + b\n", "add", cases, prompt=ADD.prompt)
        # test 1's argument differs on its real run (a new random number): it was called live
        assert r.passed, r.feedback()


def test_the_warm_up_serves_every_kind_of_reply():
    from bdc_ray.sandbox import candidate

    replies = candidate.warm_up(rounds=1)
    assert replies[0]["loaded"] is True and "solve" in replies[0]["names"]
    kinds = {k for r in replies[1:] for k in r if k != "id"}
    assert {"ok", "raised", "bad"} <= kinds, replies
    assert [r["id"] for r in replies[1:]] == [0, 1, 2, 3, 4, "live"]


def test_the_standard_library_imports_and_site_packages_do_not():
    probe = (
        "import csv, sqlite3, xml.dom.minidom, email.parser, zoneinfo\n"
        "try:\n    import yaml\nexcept ImportError:\n    yaml = None\n"
        "def add(a, b):\n    return a + b if yaml is None else 0\n"
    )
    with Sandbox(concurrency=1) as sb:
        assert sb.check(probe, ADD).passed, sb.check(probe, ADD).feedback()
    with Sandbox(concurrency=1, limits=Limits(packages=("yaml",))) as sb:
        r = sb.check(probe, ADD)
        assert not r.passed and "got: 0" in r.feedback(), r.feedback()  # exposed: it imports


def test_a_missing_required_layer_refuses_to_start_and_an_allowed_one_marks_results():
    with pytest.raises(SandboxUnavailable, match="filesystem_view"):
        Sandbox(concurrency=1, limits=Limits(packages=("no_such_package_here",)))
    limits = Limits(packages=("no_such_package_here",), allow_missing=("filesystem_view",))
    with Sandbox(concurrency=1, limits=limits) as sb:
        assert sb.isolation["filesystem_view"] is False
        r = sb.check(ADD.prompt + "    return a + b\n", ADD)
        assert r.passed and r.isolation_missing == ("filesystem_view",)
    with pytest.raises(ValueError, match="allow_missing names no isolation layer"):
        Limits(allow_missing=("firewall",))
    with pytest.raises(ValueError, match="finite"):
        Limits(test_timeout_s=float("nan"))
