"""Mesh construction and sharding rules (8 fake CPU devices)."""
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from tl_jax import parallel


def mesh_cfg(data=-1, fsdp=1, tensor=1):
    c = parallel.default_config()
    c.data, c.fsdp, c.tensor = data, fsdp, tensor
    return c


def test_eight_fake_devices():
    assert jax.device_count() == 8


@pytest.mark.parametrize("sizes,expected", [
    ((-1, 1, 1), (8, 1, 1)), ((4, 2, 1), (4, 2, 1)), ((2, 1, 4), (2, 1, 4)), ((-1, 2, 2), (2, 2, 2)),
])
def test_mesh_shapes(sizes, expected):
    mesh = parallel.make_mesh(mesh_cfg(*sizes))
    assert tuple(mesh.shape[a] for a in parallel.MESH_AXES) == expected


def test_mesh_that_does_not_multiply_to_device_count_is_an_error():
    with pytest.raises(parallel.MeshError, match="multiply to 6, but there are 8 devices"):
        parallel.make_mesh(mesh_cfg(3, 2, 1))
    with pytest.raises(parallel.MeshError, match="does not divide"):
        parallel.make_mesh(mesh_cfg(-1, 3, 1))
    with pytest.raises(parallel.MeshError, match="At most one"):
        parallel.make_mesh(mesh_cfg(-1, -1, 1))


def test_a_device_subset_is_refused_with_several_processes(monkeypatch):
    cfg = mesh_cfg()
    cfg.num_devices = 4
    assert parallel.make_mesh(cfg).devices.size == 4  # one process: the first 4
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    with pytest.raises(parallel.MeshError, match="mesh.num_devices=4 takes a subset"):
        parallel.make_mesh(cfg)
    cfg.num_devices = 8  # all of them, named explicitly: fine
    assert parallel.make_mesh(cfg).devices.size == 8


def test_a_negative_device_count_is_an_error():
    # -1 means "the rest" for an axis size; as mesh.num_devices it silently used all but one.
    cfg = mesh_cfg()
    cfg.num_devices = -1
    with pytest.raises(parallel.MeshError, match=r"mesh.num_devices=-1: expected 0"):
        parallel.make_mesh(cfg)


def test_spec_falls_back_to_replication_when_axis_does_not_divide():
    mesh = parallel.make_mesh(mesh_cfg(2, 1, 4))
    # 2 heads cannot be split 4 ways: that dimension is replicated, the others stay sharded.
    assert parallel._fit_spec(P(None, "tensor", None), (128, 2, 64), mesh) == P(None, None, None)
    assert parallel._fit_spec(P("tensor", None), (8, 3), mesh) == P("tensor", None)


def test_batch_size_checks():
    mesh = parallel.make_mesh(mesh_cfg(4, 2, 1))
    parallel.check_batch_size(16, mesh)
    with pytest.raises(parallel.MeshError, match="not divisible by the 8 data-parallel"):
        parallel.check_batch_size(12, mesh)


def test_host_batch_becomes_global_array_sharded_over_batch_axes():
    mesh = parallel.make_mesh(mesh_cfg(4, 2, 1))
    batch = {"x": np.arange(16 * 3).reshape(16, 3)}
    g = parallel.host_batch_to_global(batch, mesh)["x"]
    assert g.shape == (16, 3)
    assert g.sharding.spec == P(("data", "fsdp"))
    np.testing.assert_array_equal(np.asarray(g), batch["x"])


def test_mesh_context_applies_the_models_activation_constraints():
    # Models constrain activations by logical names; under the trainer's context they must come
    # out sharded by the rules (batch over data x fsdp), not silently unconstrained.
    import flax.linen as nn
    mesh = parallel.make_mesh(mesh_cfg(4, 2, 1))
    rules = parallel.axis_rules(parallel.default_config())
    f = jax.jit(lambda x: nn.with_logical_constraint(x * 2.0, ("batch", "length", "embed")))
    with parallel.mesh_context(mesh, rules):
        out = f(np.ones((8, 4, 6), np.float32))
    # fsdp already shards the batch, so "embed" (also fsdp) stays whole.
    assert out.sharding.shard_shape(out.shape) == (1, 4, 6)
    np.testing.assert_array_equal(np.asarray(out), 2.0)


@pytest.mark.parametrize("env,message", [
    # Each process would train alone, all in the same workdir.
    ({"TL_JAX_NUM_PROCESSES": "2", "TL_JAX_PROCESS_ID": "1"}, "no coordinator"),
    # The coordinator only admits ids 0 .. num_processes - 1: refused before any wait.
    # Values from the environment are named by their variable, not by a config key never set.
    ({"TL_JAX_COORDINATOR": "localhost:1", "TL_JAX_NUM_PROCESSES": "2",
      "TL_JAX_PROCESS_ID": "2"}, r"^TL_JAX_PROCESS_ID=2 is not below TL_JAX_NUM_PROCESSES=2"),
    ({"TL_JAX_COORDINATOR": "localhost:1", "TL_JAX_NUM_PROCESSES": "2"},
     r"^TL_JAX_COORDINATOR is set, so .*process_id=-1"),
    ({"TL_JAX_NUM_PROCESSES": "2", "TL_JAX_PROCESS_ID": "1"},
     r"^TL_JAX_NUM_PROCESSES=2, TL_JAX_PROCESS_ID=1 but no coordinator"),
])
def test_a_half_configured_multi_process_start_is_an_error(monkeypatch, env, message):
    for key in ("TL_JAX_COORDINATOR", "TL_JAX_NUM_PROCESSES", "TL_JAX_PROCESS_ID",
                "TL_JAX_AUTO_DISTRIBUTED"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValueError, match=message):
        parallel.maybe_initialize_distributed(parallel.distributed_config())
    # One process, nothing configured: nothing to start, no error.
    for key in env:
        monkeypatch.delenv(key)
    parallel.maybe_initialize_distributed(parallel.distributed_config())


def test_distributed_errors_name_the_config_keys_when_the_config_set_them(monkeypatch):
    _clear_distributed_env(monkeypatch)
    cfg = parallel.distributed_config()
    cfg.coordinator_address, cfg.num_processes, cfg.process_id = "localhost:1", 2, 2
    with pytest.raises(ValueError, match=r"^distributed.process_id=2 is not below "
                                         r"distributed.num_processes=2"):
        parallel.maybe_initialize_distributed(cfg)
    cfg.process_id = -1
    with pytest.raises(ValueError, match=r"^distributed.coordinator_address is set, so"):
        parallel.maybe_initialize_distributed(cfg)
    # Mixed: the address from the config, the id from the environment.
    monkeypatch.setenv("TL_JAX_PROCESS_ID", "5")
    with pytest.raises(ValueError, match=r"^TL_JAX_PROCESS_ID=5 is not below "
                                         r"distributed.num_processes=2"):
        parallel.maybe_initialize_distributed(cfg)


def _clear_distributed_env(monkeypatch):
    for key in ("TL_JAX_COORDINATOR", "TL_JAX_NUM_PROCESSES", "TL_JAX_PROCESS_ID",
                "TL_JAX_AUTO_DISTRIBUTED"):
        monkeypatch.delenv(key, raising=False)


@pytest.mark.parametrize("address, said", [
    ("localhost", "is not host:port"), ("http://localhost:1234", "is not host:port"),
    ("localhost:abc", "is not host:port"), (":1234", "is not host:port"),
    ("localhost:0", r": port 0 is out of range \(1 to 65535\)"),
    ("localhost:99999", r": port 99999 is out of range \(1 to 65535\)")])
def test_a_coordinator_address_that_is_not_host_port_is_an_error_before_any_wait(
        monkeypatch, address, said):
    # jax failed on "localhost" with an IndexError, and on the others waited the whole
    # initialization timeout (5 minutes) before aborting the process.
    _clear_distributed_env(monkeypatch)
    monkeypatch.setattr(jax.distributed, "initialize",
                        lambda *a, **k: pytest.fail("jax.distributed.initialize was called"))
    cfg = parallel.distributed_config()
    cfg.num_processes, cfg.process_id, cfg.coordinator_address = 2, 0, address
    with pytest.raises(ValueError, match="distributed.coordinator_address=.*" + said):
        parallel.maybe_initialize_distributed(cfg)
    monkeypatch.setenv("TL_JAX_COORDINATOR", address)
    cfg.coordinator_address = ""
    with pytest.raises(ValueError, match="TL_JAX_COORDINATOR=.*" + said):
        parallel.maybe_initialize_distributed(cfg)


def test_process_variables_that_are_not_integers_are_named(monkeypatch):
    _clear_distributed_env(monkeypatch)
    monkeypatch.setenv("TL_JAX_NUM_PROCESSES", "two")
    with pytest.raises(ValueError, match="TL_JAX_NUM_PROCESSES='two' is not an integer"):
        parallel.maybe_initialize_distributed(parallel.distributed_config())
    with pytest.raises(ValueError, match="TL_JAX_NUM_PROCESSES='two' is not an integer"):
        parallel.runs_on_this_process("generate")


def test_joining_the_coordinator_says_what_it_waits_for_first(monkeypatch, capsys):
    # A wrong address or process count makes jax wait silently for the whole timeout, then
    # abort with a C++ check failure: the line before the wait is all the user has to go on.
    _clear_distributed_env(monkeypatch)
    calls = []

    def initialize(*args, **kwargs):
        calls.append((args, kwargs, capsys.readouterr().out))

    monkeypatch.setattr(jax.distributed, "initialize", initialize)
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    cfg = parallel.distributed_config()
    cfg.coordinator_address, cfg.num_processes, cfg.process_id = "10.0.0.1:1234", 4, 3
    parallel.maybe_initialize_distributed(cfg)
    (args, kwargs, printed), = calls
    assert args[0] == "10.0.0.1:1234" and kwargs["num_processes"] == 4
    assert kwargs["process_id"] == 3
    assert kwargs["initialization_timeout"] == parallel.INITIALIZATION_TIMEOUT_S
    assert "Process 3 of 4: joining the coordinator at 10.0.0.1:1234" in printed
    assert f"up to {parallel.INITIALIZATION_TIMEOUT_S} s for all 4 processes" in printed
    # A process given another count than the coordinator's ran on without a word.
    assert capsys.readouterr().out == (
        "[distributed] Warning: this process was given distributed.num_processes=4, but the "
        "coordinator at 10.0.0.1:1234 runs 1 processes: the run goes on as 1. Give every "
        "process the same number.\n")
    monkeypatch.setattr(jax, "process_count", lambda: 4)
    parallel.maybe_initialize_distributed(cfg)
    assert "Warning" not in capsys.readouterr().out


def test_the_initialization_timeout_is_set_by_an_environment_variable(monkeypatch, capsys):
    # A wrong process count waited jax's 300 s before the abort, whatever the launch.
    _clear_distributed_env(monkeypatch)
    monkeypatch.delenv("TL_JAX_INITIALIZATION_TIMEOUT_S", raising=False)
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: calls.append(k))
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    cfg = parallel.distributed_config()
    cfg.coordinator_address, cfg.num_processes, cfg.process_id = "10.0.0.1:1234", 2, 0
    monkeypatch.setenv("TL_JAX_INITIALIZATION_TIMEOUT_S", "20")
    parallel.maybe_initialize_distributed(cfg)
    assert calls[-1]["initialization_timeout"] == 20
    printed = capsys.readouterr().out
    assert "waiting up to 20 s for all 2 processes (TL_JAX_INITIALIZATION_TIMEOUT_S sets it)" \
        in printed and "DEADLINE_EXCEEDED (RegisterTask), not all 2 processes joined" in printed
    for bad, message in (("0", "TL_JAX_INITIALIZATION_TIMEOUT_S=0 must be a positive"),
                         ("5m", "TL_JAX_INITIALIZATION_TIMEOUT_S='5m' is not an integer")):
        monkeypatch.setenv("TL_JAX_INITIALIZATION_TIMEOUT_S", bad)
        with pytest.raises(ValueError, match=message):
            parallel.maybe_initialize_distributed(cfg)
    assert len(calls) == 1


@pytest.mark.parametrize("rule,message", [
    # flax ignores a rule for a name no model uses: "batch" then had no rule, and activations
    # were silently left unsharded.
    (("batchh", ("data", "fsdp")), "unknown logical axis 'batchh'"),
    # Failed in JAX's sharding code, with a traceback.
    (("batch", ("data", "fsdpp")), "logical axis 'batch' maps to"),
    (("mlp", "model"), "logical axis 'mlp' maps to 'model'"),
    (("mlp",), "is not a .logical axis, mesh axes. pair"),
    # JAX's DuplicateSpecError traceback at the model's init.
    (("batch", ("fsdp", "fsdp")), r"logical axis 'batch' maps to \('fsdp', 'fsdp'\), which names "
                                  r"'fsdp' twice"),
])
def test_axis_rules_naming_an_unknown_axis_are_an_error(rule, message):
    cfg = parallel.default_config()
    cfg.axis_rules = (rule,) + tuple(cfg.axis_rules)[1:]
    with pytest.raises(parallel.MeshError, match=r"mesh.axis_rules: .*" + message):
        parallel.axis_rules(cfg)


def test_axis_rules_read_back_from_json_are_accepted():
    # config.json (what `tl_jax predict` rebuilds a run from) holds the rules as lists.
    cfg = parallel.default_config()
    expected = parallel.axis_rules(cfg)
    cfg.axis_rules = [[name, list(axes) if isinstance(axes, tuple) else axes]
                      for name, axes in expected]
    assert parallel.axis_rules(cfg) == expected


def test_auto_distributed_without_a_cluster_is_one_error(monkeypatch):
    # jax's own ValueError ("coordinator_address should be defined.") came with its traceback.
    _clear_distributed_env(monkeypatch)
    monkeypatch.setenv("TL_JAX_AUTO_DISTRIBUTED", "1")

    def initialize(*args, **kwargs):
        raise ValueError("coordinator_address should be defined.")

    monkeypatch.setattr(jax.distributed, "initialize", initialize)
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    with pytest.raises(ValueError, match=r"TL_JAX_AUTO_DISTRIBUTED is set, but jax found no "
                                         r"cluster .*coordinator_address should be defined.*"
                                         r"TL_JAX_COORDINATOR"):
        parallel.maybe_initialize_distributed(parallel.distributed_config())


@pytest.mark.parametrize("shape,process_of_device,ok", [
    # 2 processes x 4 devices, devices in process order.
    ((4, 1, 2), lambda i: i // 4, True),   # data 0, 1 on process 0; 2, 3 on process 1
    ((2, 1, 4), lambda i: i // 4, True),   # a tensor group of 4 within each process
    ((1, 2, 4), lambda i: i // 4, True),   # fsdp splits the batch over the processes
    # A tensor axis of 8 spans both processes: the one batch shard would be fed different
    # rows by each (the run trained silently on half the batch).
    ((1, 1, 8), lambda i: i // 4, False),
    ((2, 1, 4), lambda i: i % 2, False),   # tensor groups interleave the processes
])
def test_each_batch_shard_must_lie_within_one_process(shape, process_of_device, ok):
    ids = np.array([process_of_device(i) for i in range(8)]).reshape(shape)
    sizes = dict(zip(parallel.MESH_AXES, shape))
    if ok:
        parallel.check_batch_shards_within_processes(ids, sizes)
    else:
        with pytest.raises(parallel.MeshError, match=r"shard 0 of the batch .* lies on the "
                                                     r"devices of processes \[0, 1\]"):
            parallel.check_batch_shards_within_processes(ids, sizes)


def test_no_involuntary_full_rematerialization_on_a_mixed_mesh(tiny_bert_overrides, data_dir):
    # On data 2 x fsdp 2 x tensor 2, the word-embedding lookup gathered from a table split over
    # fsdp on its embedding axis, and XLA then had to move fsdp to the batch axis (and the
    # gradient back, at the embedding LayerNorm's and GPT dropout's backward): it found no
    # collective for that and replicated the whole activation on every device instead. XLA
    # logs this from C++ while compiling, so a subprocess counts the lines (see the worker).
    import json
    import os
    import pathlib
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parent.parent
    configs = root / "configs"
    clm = [f"data.corpus={data_dir}/polarity_sentences.jsonl", "data.batch_size=8",
           "data.tokenizer_vocab_size=400", "data.seq_len=32", "train.progress=False"]
    spec = {"mesh": [2, 2, 2], "runs": [
        ["bert_pretrain", f"{configs}/bert_pretrain.py:tiny", tiny_bert_overrides],
        ["clm", f"{configs}/gpt_pretrain.py:tiny", clm],
    ]}
    proc = subprocess.run(
        [sys.executable, str(root / "tests" / "workers" / "remat_worker.py"), json.dumps(spec)],
        capture_output=True, text=True, cwd=root, timeout=600,
        env={**os.environ, "PYTHONPATH": str(root)})
    assert proc.returncode == 0, proc.stderr[-5000:]
    counts = json.loads(proc.stdout.strip().splitlines()[-1])
    # The capture works: a program that asks for the same move draws the warning.
    assert counts.pop("control") > 0, proc.stderr[-5000:]
    assert counts == {"bert_pretrain": 0, "clm": 0}, proc.stderr[-5000:]
