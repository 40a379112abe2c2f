"""Compiles train steps on a mesh and counts XLA's "Involuntary full rematerialization" warnings.

XLA's SPMD partitioner logs them from C++ to file descriptor 2 while it compiles, out of reach of
Python's sys.stderr and pytest's capsys: each compile here runs with fd 2 redirected to a file.
Runs in its own process with the persistent compilation cache off, since a program loaded from
the cache is not partitioned again and would log nothing.

    python remat_worker.py SPEC_JSON

SPEC_JSON: {"mesh": [data, fsdp, tensor], "runs": [[name, config_spec, [overrides...]], ...]}.
Prints one JSON line on stdout: {name: number of warnings, ...}, with "control": a program that
must draw the warning, to show that they are logged and captured at all.
"""
import contextlib
import json
import os
import sys
import tempfile

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["JAX_ENABLE_COMPILATION_CACHE"] = "false"
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"  # the warnings are WARNING-level C++ logs

WARNING = "Involuntary full rematerialization"


@contextlib.contextmanager
def fd2_to(path):
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "wb") as f:
        os.dup2(f.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def count_warnings(compile_fn) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        log = os.path.join(tmp, "stderr")
        with fd2_to(log):
            compile_fn()
        text = open(log, errors="replace").read()
    sys.stderr.write(text)  # still visible in the test's output
    return text.count(WARNING)


def main():
    spec = json.loads(sys.argv[1])
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec as P

    from tl_jax import config as config_lib
    from tl_jax import parallel, train

    data, fsdp, tensor = spec["mesh"]
    counts = {}

    # The control: an activation split over fsdp on its last axis, wanted split over the batch
    # (data x fsdp) on its first, the move the embedding lookup used to ask for.
    cfg = parallel.default_config()
    cfg.data, cfg.fsdp, cfg.tensor = data, fsdp, tensor
    mesh = parallel.make_mesh(cfg)
    x = jax.ShapeDtypeStruct((16, 8, 64), jnp.float32,
                             sharding=NamedSharding(mesh, P(None, None, "fsdp")))
    control = jax.jit(lambda x: jax.lax.with_sharding_constraint(
        x * 2.0, NamedSharding(mesh, P(("data", "fsdp"), None, None))))
    counts["control"] = count_warnings(lambda: control.lower(x).compile())

    mesh_overrides = [f"mesh.data={data}", f"mesh.fsdp={fsdp}", f"mesh.tensor={tensor}"]
    for name, config_spec, overrides in spec["runs"]:
        config = config_lib.load_config(config_spec, list(overrides) + mesh_overrides)
        trainer = train.build_trainer(config, workdir=None)
        batch = trainer.task.example_batch(int(config.data.batch_size))
        counts[name] = count_warnings(
            lambda: trainer.train_step.lower(trainer.abstract_state, batch).compile())
    print(json.dumps(counts), flush=True)


if __name__ == "__main__":
    main()
