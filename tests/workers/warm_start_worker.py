"""One of two processes that warm-start params sharded over both of them (test_checkpoint.py).

Usage: warm_start_worker.py WORKDIR PROCESS_ID PORT. Each process has 2 fake CPU devices; the
params are split over all 4 (or replicated on them). Prints one JSON line: how many times the
weights were gathered across processes (`multihost_utils.process_allgather`, what `device_put`
of a host array onto devices of several processes does to check that every process passed the
same value: every device then holds the whole tensor once per process), and whether each
device's shard is its slice of the checkpoint's tensor.
"""
import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from tl_jax import checkpoint, warm_start  # noqa: E402

workdir, pid, port = sys.argv[1], int(sys.argv[2]), sys.argv[3]
jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=pid)
gathers = []
original = multihost_utils.process_allgather


def process_allgather(tree, *args, **kwargs):
    shapes = [np.shape(x) for x in jax.tree_util.tree_leaves(tree)]
    if any(shapes):  # not the scalar of a barrier (`sync_global_devices`, orbax's)
        gathers.append(shapes)
    return original(tree, *args, **kwargs)


multihost_utils.process_allgather = process_allgather
mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(2, 2), ("fsdp", "tensor"))
shardings = {"w": NamedSharding(mesh, P("fsdp", "tensor")), "b": NamedSharding(mesh, P())}
fresh = {"w": np.zeros((8, 6), np.float32), "b": np.zeros((6,), np.float32)}
params = {k: jax.make_array_from_callback(v.shape, shardings[k], lambda i, v=v: v[i])
          for k, v in fresh.items()}
params = warm_start.warm_start(params, workdir)
saved, _ = checkpoint.load_params_from_workdir(workdir)
right = all(np.array_equal(np.asarray(shard.data), saved[name][shard.index])
            for name, value in params.items() for shard in value.addressable_shards)
right = right and all(params[k].sharding == shardings[k] for k in params)
print(json.dumps({"gathers": gathers, "right": bool(right)}), flush=True)
