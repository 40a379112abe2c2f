"""Device mesh, logical-axis sharding, multi-host start-up and batch placement.

Scale-out is JAX's own: `jax.distributed` for several processes, a `Mesh` with named axes
(`data`, `fsdp`, `tensor`), and `jax.jit` with `NamedSharding`s derived from the logical axis
names that models attach to their parameters. Models name only logical axes
(`models.layers.logical_constraint` reads the mesh in context only to leave out an axis that does
not divide a dimension).
"""
from __future__ import annotations

import contextlib
import logging
import math
import os

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
# The batch dimension is split over every data-parallel axis (FSDP is data parallel too).
BATCH_AXES = ("data", "fsdp")
# The logical axis names models attach to parameters and activations (`mesh.axis_rules` maps
# them onto mesh axes).
LOGICAL_AXES = ("batch", "length", "vocab", "embed", "heads", "kv", "mlp")


class MeshError(ValueError):
    """The requested mesh does not fit the devices."""


def default_config() -> ml_collections.ConfigDict:
    """The `mesh` section: axis sizes (-1 = all remaining devices) and logical-axis rules."""
    return ml_collections.ConfigDict(dict(
        num_devices=0,  # 0 = every device of every process; N = the first N (single process)
        data=-1,
        fsdp=1,
        tensor=1,
        # logical axis name -> mesh axes. Activations: batch, length. Params: vocab, embed,
        # heads, kv, mlp. FSDP shards the embedding dimension of every weight; tensor
        # parallelism splits attention heads, MLP hidden units and the vocabulary.
        axis_rules=(
            ("batch", ("data", "fsdp")),
            ("length", None),
            ("vocab", "tensor"),
            ("embed", "fsdp"),
            ("heads", "tensor"),
            ("kv", None),
            ("mlp", "tensor"),
        ),
    ))


def distributed_config() -> ml_collections.ConfigDict:
    """The `distributed` section. Empty values fall back to JAX's environment detection."""
    return ml_collections.ConfigDict(dict(
        coordinator_address="",   # host:port of process 0; or env TL_JAX_COORDINATOR
        num_processes=0,          # or env TL_JAX_NUM_PROCESSES
        process_id=-1,            # or env TL_JAX_PROCESS_ID
        local_device_ids="",      # comma-separated, optional
    ))


# How long process 0 waits for the others to join, and they for it (jax's own default), in s;
# the environment variable TIMEOUT_VARIABLE replaces it (a quicker failure when testing a launch).
INITIALIZATION_TIMEOUT_S = 300
TIMEOUT_VARIABLE = "TL_JAX_INITIALIZATION_TIMEOUT_S"


def env_int(name: str, default: int) -> int:
    """An integer environment variable; a value that is not one is an error naming it."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer.") from None


def check_coordinator_address(address: str, key: str) -> None:
    """`host:port` of process 0, as jax.distributed wants it. Checked before any wait: without a
    port jax fails with an IndexError, and a URL or a port that is not a number make the
    processes wait the whole initialization timeout for each other, then abort."""
    host, sep, port = address.rpartition(":")
    if sep and host and port.isdigit() and "/" not in address and not 0 < int(port) < 65536:
        raise ValueError(f"{key}={address!r}: port {port} is out of range (1 to 65535).")
    if "://" in address or "/" in address or not sep or not host or not port.isdigit():
        raise ValueError(f"{key}={address!r} is not host:port (e.g. 10.0.0.1:1234): the "
                         "address and port where process 0 serves the coordinator.")


def maybe_initialize_distributed(cfg: ml_collections.ConfigDict) -> None:
    """Starts `jax.distributed` when a multi-process run is configured (config or env).

    On TPU pods and SLURM, `jax.distributed.initialize()` finds everything itself; set
    `TL_JAX_AUTO_DISTRIBUTED=1` for that. Single-process runs do nothing.
    """
    address = cfg.coordinator_address or os.environ.get("TL_JAX_COORDINATOR", "")
    num = cfg.num_processes or env_int("TL_JAX_NUM_PROCESSES", 0)
    pid = cfg.process_id if cfg.process_id >= 0 else env_int("TL_JAX_PROCESS_ID", -1)
    # Where each value came from, for the errors: the config key, else its environment variable.
    address_key = ("distributed.coordinator_address" if cfg.coordinator_address
                   else "TL_JAX_COORDINATOR")
    num_key = "distributed.num_processes" if cfg.num_processes else "TL_JAX_NUM_PROCESSES"
    pid_key = "distributed.process_id" if cfg.process_id >= 0 else "TL_JAX_PROCESS_ID"
    if jax.distributed.is_initialized():
        return
    if address:
        check_coordinator_address(address, address_key)
        if num <= 0 or pid < 0:
            raise ValueError(
                f"{address_key} is set, so the number of processes and this process's id must "
                "be too (distributed.num_processes or TL_JAX_NUM_PROCESSES, "
                "distributed.process_id or TL_JAX_PROCESS_ID; "
                f"got num_processes={num}, process_id={pid})."
            )
        if pid >= num:
            # The coordinator only admits ids below num_processes; checked here, before any wait.
            raise ValueError(f"{pid_key}={pid} is not below {num_key}={num} "
                             f"(process ids are 0 .. {num - 1}).")
        local = [int(x) for x in cfg.local_device_ids.split(",")] if cfg.local_device_ids else None
        # jax waits for every process to join, and after the timeout aborts the process with a
        # C++ check failure ("DEADLINE_EXCEEDED ... RegisterTask", blaming "another task"; no
        # Python exception, no count of who joined): say first what it waits for.
        timeout = env_int(TIMEOUT_VARIABLE, INITIALIZATION_TIMEOUT_S)
        if timeout <= 0:
            raise ValueError(f"{TIMEOUT_VARIABLE}={timeout} must be a positive number of seconds.")
        print(f"[distributed] Process {pid} of {num}: joining the coordinator at {address}; "
              f"waiting up to {timeout} s for all {num} processes ({TIMEOUT_VARIABLE} sets "
              "it). If it stops here and jax aborts with DEADLINE_EXCEEDED (RegisterTask), not "
              f"all {num} processes joined: check that process 0 is running and reachable at "
              "that address, and that every process was given the same address and number of "
              "processes.", flush=True)
        jax.distributed.initialize(address, num_processes=num, process_id=pid,
                                   local_device_ids=local, initialization_timeout=timeout)
        if jax.process_count() != num:  # the coordinator's count wins; this one was told another
            print(f"[distributed] Warning: this process was given {num_key}={num}, but the "
                  f"coordinator at {address} runs {jax.process_count()} processes: the run goes "
                  f"on as {jax.process_count()}. Give every process the same number.", flush=True)
        logging.info("jax.distributed: process %d of %d via %s", pid, num, address)
    elif os.environ.get("TL_JAX_AUTO_DISTRIBUTED"):
        try:
            jax.distributed.initialize()
        except ValueError as e:  # jax found no cluster it knows ("coordinator_address should ...")
            raise ValueError(
                f"TL_JAX_AUTO_DISTRIBUTED is set, but jax found no cluster to start from ({e}). "
                "It finds one on TPU pods, SLURM and the other clusters jax.distributed detects; "
                "elsewhere set TL_JAX_COORDINATOR, TL_JAX_NUM_PROCESSES and TL_JAX_PROCESS_ID "
                "instead.") from None
    elif num > 1 or pid > 0:
        # Without a coordinator each process would run alone, all in the same workdir.
        raise ValueError(
            f"{num_key}={num}, {pid_key}={pid} but no coordinator: set "
            "distributed.coordinator_address (or TL_JAX_COORDINATOR) to host:port of process 0, "
            "or TL_JAX_AUTO_DISTRIBUTED=1 where jax finds it (TPU pods, SLURM).")


def runs_on_this_process(command: str) -> bool:
    """For the commands that run in one process (`generate`, `extract`, `fill_mask`, `convert`,
    `static`, `build_tasks`): whether this process of a multi-process launch does the work.

    A pod or SLURM job starts the same command on every host. These commands need no
    collectives, so they do not start `jax.distributed`: process 0 runs the command alone on its
    own devices and writes the output; every other process says so and does nothing (without
    this, each process would compute the same thing and write the same file). The process id
    comes from `TL_JAX_PROCESS_ID` (and `TL_JAX_NUM_PROCESSES`), as for `train`.
    """
    num = env_int("TL_JAX_NUM_PROCESSES", 0)
    pid = env_int("TL_JAX_PROCESS_ID", -1)
    if os.environ.get("TL_JAX_AUTO_DISTRIBUTED") and pid < 0:
        raise ValueError(
            f"tl_jax {command} runs in one process, and with TL_JAX_AUTO_DISTRIBUTED set it cannot "
            "tell which process this is: run it on one host without TL_JAX_AUTO_DISTRIBUTED, or "
            "set TL_JAX_PROCESS_ID (process 0 does the work, the others exit).")
    if num > 1 and pid < 0:
        raise ValueError(f"TL_JAX_NUM_PROCESSES={num} but TL_JAX_PROCESS_ID is not set: tl_jax "
                         f"{command} runs on process 0 alone and needs the id to know which "
                         "process this is.")
    if num > 0 and pid >= num:
        raise ValueError(f"TL_JAX_PROCESS_ID={pid} is not below TL_JAX_NUM_PROCESSES={num} "
                         f"(process ids are 0 .. {num - 1}).")
    if pid > 0:
        print(f"tl_jax {command} runs in one process: process 0 does the work and writes the "
              f"output; process {pid}{f' of {num}' if num else ''} has nothing to do.",
              flush=True)
        return False
    return True


def mesh_shape(cfg: ml_collections.ConfigDict, num_devices: int) -> dict[str, int]:
    """Resolves -1 in the axis sizes and checks that they multiply to the device count."""
    sizes = {axis: int(cfg[axis]) for axis in MESH_AXES}
    unknown = [a for a, s in sizes.items() if s == -1]
    if len(unknown) > 1:
        raise MeshError(f"At most one mesh axis may be -1, got {sizes}.")
    if any(s == 0 or s < -1 for s in sizes.values()):
        raise MeshError(f"Mesh axis sizes must be positive or -1, got {sizes}.")
    known = math.prod(s for s in sizes.values() if s != -1)
    if unknown:
        if num_devices % known:
            raise MeshError(
                f"Mesh {sizes}: the fixed axes multiply to {known}, which does not divide the "
                f"{num_devices} devices."
            )
        sizes[unknown[0]] = num_devices // known
    if math.prod(sizes.values()) != num_devices:
        raise MeshError(
            f"Mesh axis sizes {sizes} multiply to {math.prod(sizes.values())}, but there are "
            f"{num_devices} devices. Set mesh.data/fsdp/tensor so that they multiply to "
            f"{num_devices} (or use -1 for one axis)."
        )
    return sizes


def make_mesh(cfg: ml_collections.ConfigDict, devices=None) -> Mesh:
    if devices is None:
        devices = jax.devices()
        if cfg.get("num_devices"):
            if isinstance(cfg.num_devices, bool) or not isinstance(cfg.num_devices, int) \
                    or cfg.num_devices < 0:
                # -1 (read as "all", as for the axis sizes) took devices[:-1]: all but one.
                raise MeshError(f"mesh.num_devices={cfg.num_devices!r}: expected 0 (every "
                                "device) or the number of devices to use.")
            if cfg.num_devices > len(devices):
                raise MeshError(f"mesh.num_devices={cfg.num_devices} but only {len(devices)} "
                                "devices exist.")
            if jax.process_count() > 1 and cfg.num_devices != len(devices):
                # The first N devices are process 0's: the other processes would hold no part
                # of the mesh and could not feed their rows of the batch.
                raise MeshError(
                    f"mesh.num_devices={cfg.num_devices} takes a subset of the devices, which "
                    f"only a single-process run can do; these {jax.process_count()} processes "
                    f"have {len(devices)} devices together. Leave mesh.num_devices at 0 (all "
                    "of them), or give each process fewer devices (distributed.local_device_ids).")
            devices = devices[: cfg.num_devices]
    sizes = mesh_shape(cfg, len(devices))
    shape = tuple(sizes[a] for a in MESH_AXES)
    try:
        device_array = mesh_utils.create_device_mesh(shape, devices=devices)
    except Exception:  # noqa: BLE001 - fake CPU devices have no physical topology
        device_array = np.asarray(devices).reshape(shape)
    mesh = Mesh(device_array, MESH_AXES)
    if jax.process_count() > 1:
        check_batch_shards_within_processes(
            np.vectorize(lambda d: d.process_index)(device_array), dict(mesh.shape))
    return mesh


def check_batch_shards_within_processes(process_ids: np.ndarray, sizes: dict) -> None:
    """Each process feeds its own rows of every global batch (`host_batch_to_global`), so each
    data-parallel shard of the batch must lie on one process's devices. A shard spread over
    several processes (e.g. a tensor axis spanning them) would take each process's different
    rows as copies of one another: jax then built a smaller batch than data.batch_size from
    them, and training went on silently on the wrong data.

    `process_ids`: the process index of each device of the mesh, shaped like it (`MESH_AXES`).
    """
    batch_dims = tuple(MESH_AXES.index(a) for a in BATCH_AXES)
    other_dims = tuple(i for i in range(len(MESH_AXES)) if i not in batch_dims)
    per_shard = np.transpose(process_ids, batch_dims + other_dims).reshape(
        math.prod(process_ids.shape[i] for i in batch_dims), -1)
    for shard, owners in enumerate(per_shard):
        owners = sorted(set(owners.tolist()))
        if len(owners) > 1:
            raise MeshError(
                f"Mesh {sizes}: data-parallel shard {shard} of the batch (of "
                f"{per_shard.shape[0]}, data x fsdp) lies on the devices of processes {owners}, "
                "but each process feeds its own rows of the batch. Make data x fsdp a multiple "
                f"of the {len(np.unique(process_ids))} processes, and tensor at most the devices "
                "of one process.")


@contextlib.contextmanager
def mesh_context(mesh: Mesh, rules):
    """The context to trace and run sharded code in: `mesh` as JAX's current mesh, plus the
    logical-axis `rules`.

    Flax's activation constraints (`nn.with_logical_constraint`) read JAX's abstract mesh,
    which `jax.set_mesh` sets; the older `with mesh:` leaves it empty, and the constraints then
    silently do nothing (so setup.py asks for a jax with `set_mesh` and a flax that reads it).
    """
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield


def axis_rules(cfg: ml_collections.ConfigDict) -> tuple:
    """`mesh.axis_rules` as flax wants them, checked: flax silently ignores a rule whose logical
    name no model uses (a misspelt "batch" left activations unsharded), and a mesh axis that does
    not exist failed in JAX's sharding code with a traceback."""
    rules = []
    for rule in cfg.axis_rules:
        if not isinstance(rule, (tuple, list)) or len(rule) != 2:
            raise MeshError(f"mesh.axis_rules: {rule!r} is not a (logical axis, mesh axes) pair.")
        name, axes = rule
        if name not in LOGICAL_AXES:
            raise MeshError(f"mesh.axis_rules: unknown logical axis {name!r}; the models name "
                            f"{', '.join(LOGICAL_AXES)}.")
        names = () if axes is None else (axes,) if isinstance(axes, str) else axes
        if not isinstance(names, (tuple, list)) or any(a not in MESH_AXES for a in names):
            raise MeshError(f"mesh.axis_rules: logical axis {name!r} maps to {axes!r}; expected "
                            f"None, a mesh axis or a tuple of them ({', '.join(MESH_AXES)}).")
        repeated = sorted({a for a in names if list(names).count(a) > 1})
        if repeated:  # JAX's DuplicateSpecError traceback at the model's init, before
            raise MeshError(f"mesh.axis_rules: logical axis {name!r} maps to {axes!r}, which "
                            f"names {', '.join(map(repr, repeated))} twice; a dimension is split "
                            "over each mesh axis at most once.")
        rules.append((name, tuple(axes) if isinstance(axes, list) else axes))
    return tuple(rules)


def _fit_spec(spec: P, shape: tuple[int, ...], mesh: Mesh) -> P:
    """Drops mesh axes from dimensions they do not divide (e.g. 2 heads on a 4-way tensor axis).

    The dimension is then replicated over that axis: correct, only less sharded.
    """
    fitted = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        if axes is None:
            fitted.append(None)
            continue
        names = (axes,) if isinstance(axes, str) else tuple(axes)
        kept = []
        for name in names:
            size = mesh.shape[name] * math.prod(mesh.shape[k] for k in kept)
            if dim % size == 0:
                kept.append(name)
        fitted.append(tuple(kept) if len(kept) > 1 else (kept[0] if kept else None))
    return P(*fitted)


def logical_to_shardings(boxed_tree, mesh: Mesh, rules) -> object:
    """NamedShardings for a tree of (abstract) values, some boxed in `nn.Partitioned`.

    The result has the structure of the *unboxed* tree. Unannotated leaves are replicated.
    """
    def leaf_sharding(x):
        if isinstance(x, nn.LogicallyPartitioned):
            spec = nn.logical_to_mesh_axes(x.names, rules)
            value = x.value
        elif isinstance(x, nn.Partitioned):
            spec, value = P(*x.names), x.value
        else:
            spec, value = P(), x
        return NamedSharding(mesh, _fit_spec(spec, tuple(np.shape(value)), mesh))

    return jax.tree_util.tree_map(
        leaf_sharding, boxed_tree, is_leaf=lambda x: isinstance(x, nn.Partitioned)
    )


def path_str(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def shardings_like_params(tree, param_shardings, mesh: Mesh):
    """Shardings for an optimizer state: a leaf whose path ends with a parameter's path and has
    that parameter's shape gets the parameter's sharding; anything else is replicated."""
    by_path = {}
    flat, _ = jax.tree_util.tree_flatten_with_path(param_shardings)
    for path, sharding in flat:
        by_path[path_str(path)] = sharding
    def find(path, leaf):
        name = path_str(path)
        parts = name.split("/")
        for i in range(len(parts)):
            suffix = "/".join(parts[i:])
            if suffix in by_path:
                spec = by_path[suffix].spec
                return NamedSharding(mesh, _fit_spec(spec, tuple(np.shape(leaf)), mesh))
        return NamedSharding(mesh, P())

    return jax.tree_util.tree_map_with_path(find, tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH_AXES))


def check_batch_size(global_batch: int, mesh: Mesh, name: str = "") -> None:
    """Every data-parallel shard and every process must get the same number of rows. `name`
    (e.g. "data.eval_batch_size=12") says where `global_batch` comes from in the config."""
    what = name or f"Global batch size {global_batch}"
    shards = math.prod(mesh.shape[a] for a in BATCH_AXES)
    if global_batch % shards:
        raise MeshError(
            f"{what} is not divisible by the {shards} data-parallel "
            f"shards of mesh {dict(mesh.shape)}."
        )
    if global_batch % jax.process_count():
        raise MeshError(
            f"{what} is not divisible by {jax.process_count()} processes."
        )


def host_batch_to_global(batch: dict, mesh: Mesh) -> dict:
    """Assembles each process's rows into one global array sharded over the batch axes."""
    sharding = batch_sharding(mesh)
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
        for k, v in batch.items()
    }
