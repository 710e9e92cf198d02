"""A Ray cluster of several nodes on this one machine, whose nodes see different filesystems.

    python scripts/local_cluster.py [--workers 2] [--cpus-per-worker 1] [--s3]

The head runs as this user's process; each worker node runs in a PID and mount namespace of
its own (``unshare``), with a private /tmp, /dev/shm, home, cache ($BDC_RAY_CACHE) and working
directory, so a file one node writes is invisible to the others, as on separate machines.
Worker ``i`` has the custom resource ``node_i`` (1), so a test can place work on it, and every
worker has ``worker`` (WORKER_UNITS), so a config whose roles ask for ``{worker: 1}`` keeps
them all off the head (the head has ``head``: 1). With
``--s3`` an S3-compatible server (moto) is started on 127.0.0.1 for run storage, and every
node gets its address. Killing a worker (`kill_worker`) kills its namespace's PID 1, which
takes everything on that node with it. Closing leaves no process, mount or namespace behind.
Needs root, or unprivileged user namespaces (``unshare --user --map-root-user``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# node heartbeats: a killed node is declared dead in seconds, not the default half minute
_HEALTH = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "5",
           "RAY_health_check_initial_delay_ms": "1000"}  # fmt: skip


# units of the `worker` resource each worker node advertises: enough that every role of a
# pipeline can hold one at once, so the resource places work without limiting it
WORKER_UNITS = 100

_COUNT_ALIVE = (
    "import sys, ray; ray.init(address=sys.argv[1], logging_level='ERROR');"
    "print('alive', sum(n['Alive'] for n in ray.nodes()))"
)


# where every actor and task of the cluster runs or ran, by node name, from Ray's state API
_PLACEMENTS = """
import json, sys
from ray.util.state import list_actors, list_nodes, list_tasks
url = sys.argv[1]
names = {}
for n in list_nodes(address=url, detail=True):
    own = [r for r in n.resources_total if r == "head" or r.startswith("node_")]
    names[n.node_id] = own[0] if own else n.node_id
actors = [(a.class_name, names.get(a.node_id, a.node_id), a.state)
          for a in list_actors(address=url, limit=10000, detail=True)]
tasks = [(t.name, names.get(t.node_id, t.node_id), t.state)
         for t in list_tasks(address=url, limit=10000, detail=True) if t.type == "NORMAL_TASK"]
print(json.dumps({"actors": actors, "tasks": tasks}))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _own_ports() -> list[str]:
    """Ports of a node's agents: nodes on one machine (and a test session's own Ray) would
    otherwise all ask for the same defaults."""
    names = ("dashboard-agent-listen-port", "dashboard-agent-grpc-port",
             "runtime-env-agent-port", "metrics-export-port")  # fmt: skip
    return [f"--{n}={_free_port()}" for n in names]


def _ray() -> str:
    return str(Path(sys.executable).with_name("ray"))


class LocalCluster:
    def __init__(
        self,
        workers: int = 2,
        cpus_per_worker: float = 1,
        head_cpus: float = 1,
        env: dict[str, str] | None = None,
        shared: str | os.PathLike | None = None,
        dashboard: bool = False,
        node_resources: dict[str, float] | None = None,
    ) -> None:
        """`env`: extra environment for every node (run storage's endpoint, say); `shared`: a
        folder every node sees at the same path (the NFS/EFS case); `dashboard`: the head also
        serves the dashboard, its job API and Ray's state API at `dashboard_url`;
        `node_resources`: custom resources every node advertises, head included."""
        self.workers, self.cpus_per_worker, self.head_cpus = workers, cpus_per_worker, head_cpus
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith("RAY_")},
                    **_HEALTH, "RAY_AUTH_MODE": "token", **(env or {})}  # fmt: skip
        # a token of this cluster's own, in the environment: a worker's home is private
        self.env["RAY_AUTH_TOKEN"] = os.urandom(32).hex()
        self.shared = Path(shared) if shared else None
        self.node_resources = dict(node_resources or {})
        self.root = Path(tempfile.mkdtemp(prefix="bdc-cluster-"))
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.dashboard_url = f"http://127.0.0.1:{_free_port()}" if dashboard else None
        self.head: subprocess.Popen | None = None
        self.nodes: dict[int, subprocess.Popen] = {}

    def start(self) -> LocalCluster:
        head_tmp = self.root / "head"
        head_tmp.mkdir()
        dash = (["--include-dashboard=true", "--dashboard-host=127.0.0.1",
                 f"--dashboard-port={self.dashboard_url.rsplit(':', 1)[1]}"]
                if self.dashboard_url else ["--include-dashboard=false"])  # fmt: skip
        self.head = subprocess.Popen(
            [_ray(), "start", "--head", "--block", f"--port={self.port}",
             f"--num-cpus={self.head_cpus}", "--num-gpus=0",
             f"--temp-dir={head_tmp}", *dash, "--disable-usage-stats",
             *_own_ports(), "--resources", json.dumps({**self.node_resources, "head": 1})],
            env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        self._wait_for(lambda n: n >= 1, "the head")
        for i in range(self.workers):
            self.start_worker(i)
        self._wait_for(lambda n: n >= 1 + self.workers, f"{self.workers} worker nodes")
        return self

    def start_worker(self, i: int) -> None:
        """Worker node i, in its own PID and mount namespaces (also to restart a killed one)."""
        ray = [_ray(), "start", "--block", f"--address={self.address}",
               f"--num-cpus={self.cpus_per_worker}",
               "--num-gpus=0", "--disable-usage-stats", "--temp-dir=/tmp/ray", *_own_ports(),
               "--resources", json.dumps({**self.node_resources, f"node_{i}": 1,
                                          "worker": WORKER_UNITS})]  # fmt: skip
        script = " && ".join(self._node_mounts(ray))
        env = {**self.env, "HOME": "/tmp/home", "BDC_RAY_CACHE": "/tmp/cache",
               "TMPDIR": "/tmp", "BDC_NODE": f"node_{i}"}  # fmt: skip
        unshare = ["unshare", "--mount", "--pid", "--fork", "--mount-proc"]
        if os.geteuid() != 0:
            unshare[1:1] = ["--user", "--map-root-user"]
        self.nodes[i] = subprocess.Popen(
            [*unshare, "--", "sh", "-c", script], env=env, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip

    def _node_mounts(self, ray: list[str]) -> list[str]:
        """The worker's shell steps: private /tmp and /dev/shm, with the folders every node
        must see at the same path held aside and bound back (the shared folder, and this
        interpreter's environment and the project when they live under /tmp, as in a fresh
        clone there: hidden, the node could not even start Ray)."""
        keep = [Path(sys.prefix).resolve(), Path(__file__).resolve().parents[1]]
        keep = [p for p in keep if p.is_relative_to("/tmp") or p.is_relative_to("/dev/shm")]
        keep += [self.shared] if self.shared else []
        steps = ["mount --make-rprivate /", "mount -t tmpfs tmpfs /mnt"]
        for n, path in enumerate(keep):
            steps += [f"mkdir /mnt/{n}", f"mount --bind {shlex.quote(str(path))} /mnt/{n}"]
        steps += [
            "mount -t tmpfs -o size=2g tmpfs /tmp",
            "mount -t tmpfs -o size=2g tmpfs /dev/shm",
        ]
        for n, path in enumerate(keep):
            q = shlex.quote(str(path))
            steps += [f"mkdir -p {q}", f"mount --bind /mnt/{n} {q}"]
        steps += [
            "mkdir -p /tmp/home /tmp/cache /tmp/work",
            "cd /tmp/work",
            "exec " + shlex.join(ray),
        ]
        return steps

    def kill_worker(self, i: int | str) -> None:
        """SIGKILL worker i's (or node "node_<i>"'s) namespace: its raylet, object store and
        workers end at once."""
        proc = self.nodes.pop(int(str(i).removeprefix("node_")))
        os.killpg(proc.pid, signal.SIGKILL)  # unshare and the namespace's PID 1 (its child)
        proc.wait()

    def alive_nodes(self) -> int:
        """Nodes the cluster counts alive, asked from a process of its own (a driver here may
        be connected to another Ray)."""
        out = subprocess.run(
            [sys.executable, "-c", _COUNT_ALIVE, self.address], env=self.env,
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        counts = [ln.split()[1] for ln in out.stdout.splitlines() if ln.startswith("alive ")]
        return int(counts[-1]) if out.returncode == 0 and counts else 0

    def placements(self) -> dict[str, list[tuple[str, str, str]]]:
        """{"actors": [(class, node, state)], "tasks": [(name, node, state)]}: every actor and
        task the cluster ran, dead ones included, on node "head" or "node_<i>" (needs
        `dashboard=True`: it is Ray's state API)."""
        if not self.dashboard_url:
            raise RuntimeError("placements() needs LocalCluster(dashboard=True)")
        out = subprocess.run(
            [sys.executable, "-c", _PLACEMENTS, self.dashboard_url], env=self.env,
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if out.returncode != 0:
            raise RuntimeError(f"Ray's state API did not answer: {out.stderr[-2000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    def nodes_of(self, name: str, alive_only: bool = True) -> set[str]:
        """The nodes an actor class (or task) named `name` is on (alive ones, by default)."""
        seen = self.placements()
        return {node for n, node, state in seen["actors"] + seen["tasks"]
                if (n == name or n.endswith(f".{name}"))
                and (not alive_only or state in ("ALIVE", "RUNNING"))}  # fmt: skip

    # on 2 busy cores (CI, a test suite beside it) two worker raylets took over 120 s to
    # register; nothing is timed here, this only bounds a start that cannot succeed
    def _wait_for(self, ok, what: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.head is not None and self.head.poll() is not None:
                raise RuntimeError("the Ray head exited while starting")
            if ok(self.alive_nodes()):
                return
            time.sleep(1)
        raise TimeoutError(f"{what} did not join the cluster in {timeout:.0f} s")

    def close(self) -> None:
        for i in list(self.nodes):
            self.kill_worker(i)
        if self.head is not None:
            # the head first asked to stop (GCS and raylet flush), then its group killed
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(self.head.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.head.wait(timeout=15)
                    os.killpg(self.head.pid, signal.SIGKILL)  # stragglers of its group
                except (subprocess.TimeoutExpired, ProcessLookupError):
                    continue
                break
            self.head = None
        subprocess.run(["rm", "-rf", str(self.root)], check=False)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cpus-per-worker", type=float, default=1)
    ap.add_argument("--s3", action="store_true", help="also start an S3 server for run storage")
    ap.add_argument("--dashboard", action="store_true",
                    help="serve the dashboard (and `ray job submit`) from the head")  # fmt: skip
    args = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from contextlib import ExitStack

    with ExitStack() as stack:
        env = {}
        if args.s3:
            from tests.helpers.s3 import s3_server

            env = stack.enter_context(s3_server(buckets=("bdc",)))
        cluster = stack.enter_context(
            LocalCluster(args.workers, args.cpus_per_worker, env=env, dashboard=args.dashboard)
        )
        print(f"Ray cluster at {cluster.address}: head + {args.workers} worker nodes", flush=True)
        if cluster.dashboard_url:
            print(f"dashboard and job API at {cluster.dashboard_url}", flush=True)
        print(f"export RAY_AUTH_MODE=token RAY_AUTH_TOKEN={cluster.env['RAY_AUTH_TOKEN']}",
              flush=True)  # fmt: skip
        for k, v in env.items():
            print(f"export {k}={v}", flush=True)
        if args.s3:
            print("run storage: --run-dir s3://bdc/<run>", flush=True)
        print("Ctrl-C stops it", flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
