"""The test cluster: a Ray head and two worker nodes on this machine, each worker with its own
/tmp, home, cache and working directory (a file written on one node is invisible on the
others), a folder every node mounts (the NFS/EFS case), run storage in an S3 server every node
reaches, a worker killed with everything on it, and nothing left behind after."""

from __future__ import annotations

import os
import subprocess
import sys

from scripts.local_cluster import LocalCluster
from tests.helpers.s3 import s3_server

PROBE = """
import json, os, sys, ray
ray.init(address=sys.argv[1], logging_level="ERROR")
shared = sys.argv[2]

@ray.remote(num_cpus=0.1)
def visit(name, uri):
    import socket
    from bdc_ray.storage import RunStorage
    with open("/tmp/bdc-probe", "a") as fh:
        fh.write(name + "\\n")
    with open(os.path.join(shared, name), "w") as fh:
        fh.write(name)
    st = RunStorage(uri)
    st.local.mkdir(parents=True, exist_ok=True)
    (st.local / f"{name}.txt").write_text(name)
    st.push()
    return {"name": name, "probe": open("/tmp/bdc-probe").read().split(),
            "home": os.environ["HOME"], "cache": os.environ.get("BDC_RAY_CACHE"),
            "cwd": os.getcwd(), "shared": sorted(os.listdir(shared))}

out = {}
for name in ("node_0", "node_1", "head"):  # one after the other: each sees what came before
    out[name] = ray.get(visit.options(resources={name: 0.01}).remote(name, sys.argv[3]))
print(json.dumps(out))
"""


def _ray_processes(cluster: LocalCluster) -> list[str]:
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [
        line for line in ps.splitlines() if cluster.address in line or str(cluster.root) in line
    ]


def test_nodes_see_their_own_files_share_storage_and_leave_nothing(tmp_path):
    import json

    shared = tmp_path / "shared"
    shared.mkdir()
    with s3_server(buckets=("bdc",)) as env:
        cluster = LocalCluster(workers=2, cpus_per_worker=1, head_cpus=1, env=env, shared=shared)
        try:
            cluster.start()
            got = subprocess.run(
                [sys.executable, "-c", PROBE, cluster.address, str(shared), "s3://bdc/c"],
                env=cluster.env, capture_output=True, text=True, timeout=300,
            )  # fmt: skip
            assert got.returncode == 0, got.stderr[-3000:]
            seen = json.loads(got.stdout.strip().splitlines()[-1])
            # each worker's /tmp is its own: neither sees the other's probe, nor the head's
            assert seen["node_0"]["probe"] == ["node_0"]
            assert seen["node_1"]["probe"] == ["node_1"]
            assert "node_0" not in seen["head"]["probe"] and "node_1" not in seen["head"]["probe"]
            assert len({seen[n]["home"] for n in ("node_0", "node_1")}) == 1  # same path...
            assert seen["node_0"]["cwd"] == "/tmp/work"  # ...in a /tmp of each node's own
            # the shared folder is the same on every node
            assert seen["head"]["shared"] == ["head", "node_0", "node_1"]
            assert sorted(os.listdir(shared)) == ["head", "node_0", "node_1"]
            # run storage: every node pushed into one bucket
            from tests.storage.test_run_storage import objects

            assert set(objects("s3://bdc/c")) == {"node_0.txt", "node_1.txt", "head.txt"}

            cluster.kill_worker(1)
            cluster._wait_for(lambda n: n == 2, "the cluster to notice the dead node", 60)
        finally:
            cluster.close()
        assert _ray_processes(cluster) == []
        assert not cluster.root.exists()
        mounts = open("/proc/self/mounts").read()
        assert str(shared) not in mounts and "bdc-cluster-" not in mounts
