"""ReplicaGroup on local Ray: round robin, health, restart, and nothing left after the block."""

import pytest
import ray

from bdc_ray.actors.replicas import ReplicaGroup


@ray.remote(num_cpus=0)
class Echo:
    def __init__(self, tag: str, name: str) -> None:
        self.tag, self.name = tag, name

    def info(self) -> dict:
        return {"name": self.name}

    def who(self, x: int) -> tuple:
        return self.name, self.tag, x


def _alive(name: str) -> bool:
    try:
        ray.get_actor(name)
        return True
    except ValueError:
        return False


def test_calls_go_round_robin_and_the_block_stops_every_replica(ray_session):
    with ReplicaGroup(Echo, "test:echo", 3, args=("t",)) as group:
        got = ray.get([group.call("who", i) for i in range(7)])
        assert [g[0] for g in got] == [f"test:echo:{i % 3}" for i in range(7)]
        assert [g[2] for g in got] == list(range(7)) and {g[1] for g in got} == {"t"}
        assert group.health() == [True, True, True]
        old = group.handles[1]
        group.restart(1)
        assert group.handles[1] != old and group.health() == [True, True, True]
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(old.who.remote(0))  # the replaced actor is gone
    assert group.handles == []
    assert not any(_alive(f"test:echo:{i}") for i in range(3))


def test_an_error_in_the_block_still_stops_the_replicas(ray_session):
    with pytest.raises(RuntimeError, match="boom"):
        with ReplicaGroup(Echo, "test:echo2", 2, args=("t",)) as group:
            ray.get(group.call("who", 0))
            raise RuntimeError("boom")
    assert not any(_alive(f"test:echo2:{i}") for i in range(2))


def test_a_copy_routes_but_cannot_create_actors(ray_session):
    import pickle

    with ReplicaGroup(Echo, "test:echo3", 2, args=("t",)) as group:
        copy = pickle.loads(pickle.dumps(group))
        assert ray.get(copy.call("who", 5))[2] == 5
        with pytest.raises(RuntimeError, match="cannot create actors"):
            copy.restart(0)
    with pytest.raises(ValueError, match="at least one replica"):
        ReplicaGroup(Echo, "test:none", 0)
