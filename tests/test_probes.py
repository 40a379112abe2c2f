"""Feature-based probes: feature choices, pooled == token-level for the linear head, BiLSTM
length masking, and a frozen encoder whose gradient is never computed."""
import math
import os
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tl_jax.models import bert, probes


def _tiny():
    cfg = bert.BertConfig(vocab_size=40, hidden_size=16, num_layers=4, num_heads=2,
                          intermediate_size=32, max_position_embeddings=16, dropout_rate=0.0,
                          attention_dropout_rate=0.0)
    ids = jax.random.randint(jax.random.PRNGKey(1), (3, 8), 1, 40)
    mask = jnp.array([[1] * 8, [1] * 5 + [0] * 3, [1] * 2 + [0] * 6])
    return cfg, ids, mask


def _layers():
    cfg, ids, mask = _tiny()
    model = bert.BertModel(cfg)
    params = model.init(jax.random.PRNGKey(0), ids)["params"]
    _, inter = model.apply(params and {"params": params}, ids, None, mask)
    return probes.stack_layers(inter), inter, mask


def test_stack_layers_and_feature_selection():
    layers, inter, mask = _layers()
    assert layers.shape == (3, 5, 8, 16)
    np.testing.assert_array_equal(layers[:, 4], inter["layer_4"])
    expected = {
        "embeddings": inter["embeddings"], "last": inter["layer_4"],
        "second_to_last": inter["layer_3"],
        "sum_last_four": sum(inter[f"layer_{i}"] for i in range(1, 5)),
        "concat_last_four": jnp.concatenate([inter[f"layer_{i}"] for i in range(1, 5)], -1),
    }
    for feature, value in expected.items():
        probe = probes.FeatureProbe(2, feature=feature)
        got = probe.bind({}, rngs={})._select(layers, mask, 5)
        np.testing.assert_allclose(got, value, rtol=1e-5, atol=1e-5, err_msg=feature)


@pytest.mark.parametrize("feature,ids", [("weighted_sum_last_four", [3, 4, 5, 6]),
                                         ("weighted_sum_all_layers", [1, 2, 3, 4, 5, 6]),
                                         ("scalar_mix", [0, 1, 2, 3, 4, 5, 6])])
def test_weighted_sums_of_the_bert_papers_table_mix_exactly_their_layers(feature, ids):
    # BERT Table 7's "Weighted Sum Last Four Hidden" and "Weighted Sum All 12 Layers" (encoder
    # layers, not the embeddings) learn their weights; `sum_last_four` is a plain sum and
    # `scalar_mix` (ELMo) mixes the embeddings in as well. 6 layers: "last four" != "all".
    layers = jax.random.normal(jax.random.PRNGKey(3), (2, 7, 5, 4))  # (B, N+1, T, H)
    scalars = jnp.arange(len(ids), dtype=jnp.float32) * 0.3 - 0.5
    probe = probes.FeatureProbe(2, feature=feature)
    params = dict(probe.init(jax.random.PRNGKey(0), layers)["params"])
    params["scalar_mix"] = {"scalars": scalars, "gamma": jnp.float32(1.7)}
    expected = 1.7 * sum(w * layers[:, i] for w, i in zip(jax.nn.softmax(scalars), ids))
    # The same linear head on the expected feature (`selected`: already chosen, (B, T, H)).
    want = probes.FeatureProbe(2).apply({"params": {"output": params["output"]}}, expected,
                                        selected=True)
    np.testing.assert_allclose(probe.apply({"params": params}, layers), want, rtol=1e-5,
                               atol=1e-6)


def test_weighted_sum_last_four_needs_four_layers():
    with pytest.raises(ValueError, match="needs 4 encoder layers"):
        probes.FeatureProbe(2, feature="weighted_sum_last_four").init(
            jax.random.PRNGKey(0), jnp.ones((2, 4, 5, 4)))


def test_second_to_last_of_a_one_layer_encoder_is_not_its_embeddings():
    # (B, N+1, T, H) with N=1: layers[:, N-1] was the embedding output, taken without a word.
    probe = probes.FeatureProbe(2, feature="second_to_last")
    with pytest.raises(ValueError, match="needs 2 encoder layers; got 1"):
        probe.init(jax.random.PRNGKey(0), jnp.ones((2, 2, 5, 4)))
    params = probe.init(jax.random.PRNGKey(0), jnp.ones((2, 3, 5, 4)))["params"]
    assert probe.apply({"params": params}, jnp.ones((2, 3, 5, 4))).shape == (2, 2)


@pytest.mark.parametrize("feature", probes.FEATURES)
def test_linear_probe_on_pooled_features_equals_token_level(feature):
    layers, _, mask = _layers()
    probe = probes.FeatureProbe(3, feature=feature)
    params = probe.init(jax.random.PRNGKey(0), layers, mask)["params"]
    token_level = probe.apply({"params": params}, layers, mask)
    pooled = probes.pool(layers, mask, "mean")  # (B, N+1, H)
    assert pooled.shape == (3, 5, 16)
    np.testing.assert_allclose(probe.apply({"params": params}, pooled, None, pooled=True),
                               token_level, rtol=1e-4, atol=1e-5)


def test_bilstm_head_ignores_padding():
    layers, _, mask = _layers()
    probe = probes.FeatureProbe(2, feature="sum_last_four", head="bilstm", lstm_hidden=8)
    params = probe.init(jax.random.PRNGKey(0), layers, mask)["params"]
    assert {"forward_lstm", "backward_lstm", "output"} == set(params)
    noisy = layers.at[1, :, 5:].set(50.0).at[2, :, 2:].set(-50.0)
    np.testing.assert_allclose(probe.apply({"params": params}, noisy, mask),
                               probe.apply({"params": params}, layers, mask), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="only with the linear head"):
        probe.apply({"params": params}, probes.pool(layers, mask, "mean"), pooled=True)


def test_probe_classifier_stops_encoder_gradients():
    cfg, ids, mask = _tiny()
    model = probes.ProbeClassifier(cfg, 2, feature="scalar_mix")
    params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), ids, None, mask))["params"]
    assert set(params) == {"bert", "head"} and "scalar_mix" in params["head"]

    def loss(p):
        out, _ = model.apply({"params": p}, ids, None, mask)
        return jnp.sum(out["logits"] ** 2)

    grads = jax.grad(loss)(params)
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads["bert"]))
    assert any(float(jnp.abs(g).max()) > 0.0 for g in jax.tree.leaves(grads["head"]))
    # The cached path (features in, encoder not run) gives the same logits.
    layers = model.apply({"params": params}, ids, None, mask, method=model.encode)[0]
    direct, _ = model.apply({"params": params}, ids, None, mask)
    np.testing.assert_allclose(model.apply({"params": params}, layers, mask, method=model.probe),
                               direct["logits"], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="needs 4 encoder layers"):
        probes.FeatureProbe(2, feature="concat_last_four").init(
            jax.random.PRNGKey(0), jnp.zeros((1, 3, 4, 8)))


@pytest.mark.parametrize("feature, need", [("weighted_sum_last_four", 4),
                                           ("concat_last_four", 4), ("second_to_last", 2)])
def test_a_feature_deeper_than_the_encoder_is_refused_before_the_data_is_encoded(
        data_dir, tmp_path, monkeypatch, feature, need):
    # It failed at the probe's first call, after tokenising (and, cached, encoding) the data,
    # as "feature ... needs 4 encoder layers; got 1", naming no key.
    from tl_jax import config as config_lib, tasks
    from tl_jax.tasks import probe

    monkeypatch.setattr(probe.Task, "encode", lambda *a, **k: pytest.fail("encoded the data"))
    config = config_lib.load_config("configs/transfer_feature.py:tiny", [
        "data.max_train_examples=32", "data.max_eval_examples=16", "data.max_seq_length=16",
        f"probe.feature={feature}", "model.num_layers=1"])
    with pytest.raises(ValueError, match=rf"^probe.feature='{feature}' needs {need} encoder "
                                         r"layers; the encoder has 1 "):
        tasks.build_task(config, str(tmp_path / "probe"))


def test_a_lora_rank_above_the_hidden_size_is_refused_before_the_data_is_encoded(
        data_dir, tmp_path, monkeypatch):
    # transfer.lora_rank=200 on the 128-wide tiny encoder trained without a word.
    from tl_jax import config as config_lib, tasks
    from tl_jax.tasks import probe

    monkeypatch.setattr(probe.Task, "encode", lambda *a, **k: pytest.fail("encoded the data"))
    config = config_lib.load_config("configs/transfer_lora.py:tiny", [
        "data.max_train_examples=32", "data.max_eval_examples=16", "data.max_seq_length=16",
        "transfer.lora_rank=200"])
    with pytest.raises(ValueError, match=r"^transfer.lora_rank=200 is larger than the encoder's "
                                         r"hidden_size=128: .*set transfer.lora_rank <= 128"):
        tasks.build_task(config, str(tmp_path / "probe"))


@pytest.mark.parametrize("key, value", [("feature", "layer_3"), ("head", "lstm"),
                                        ("pooling", "max")])
def test_a_misspelt_probe_setting_names_its_key_before_the_data_is_read(tmp_path, key, value):
    # probe.feature=layer_3 failed as "probe feature='layer_3'; ..." at the model's first call,
    # after the data had been read and tokenised.
    from tl_jax import config as config_lib, tasks

    config = config_lib.load_config("configs/transfer_feature.py:tiny", [
        f"data.train_file={tmp_path / 'missing.jsonl'}", f"probe.{key}={value}"])
    with pytest.raises(ValueError, match=rf"^probe.{key}='{value}'; expected one of "):
        tasks.build_task(config, str(tmp_path / "probe"))


def test_feature_cache_is_not_shared_by_encoders_of_different_depth(data_dir, tmp_path):
    # probe.cache_dir serves sweeps; a run keeping fewer layers of init_from must not read the
    # pooled features of a deeper encoder (its "last" would be the other run's last layer).
    from tl_jax import config as config_lib, tasks

    def task(num_layers):
        config = config_lib.load_config("configs/transfer_feature.py:minilm", [
            "data.max_train_examples=32", "data.max_eval_examples=16", "data.max_seq_length=16",
            f"probe.cache_dir={tmp_path / 'cache'}", f"model.num_layers={num_layers}"])
        return tasks.build_task(config, str(tmp_path / f"run{num_layers}"))

    assert task(2).train_arrays["features"].shape == (32, 3, 384)
    shallow = task(1)
    assert shallow.train_arrays["features"].shape == (32, 2, 384)
    assert len(list((tmp_path / "cache").glob("*train*.npy"))) == 2


def test_a_damaged_feature_cache_file_is_named_not_a_numpy_traceback(data_dir, tmp_path):
    from tl_jax import config as config_lib, tasks

    config = config_lib.load_config("configs/transfer_feature.py:tiny", [
        "data.max_train_examples=32", "data.max_eval_examples=16", "data.max_seq_length=16",
        f"probe.cache_dir={tmp_path / 'cache'}"])
    tasks.build_task(config, str(tmp_path / "run1"))
    (path,) = (tmp_path / "cache").glob("*train*.npy")
    path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])  # a copy cut short
    with pytest.raises(ValueError, match=rf"^{path}: the cached train features do not read "
                                         r"\(.*\); delete it"):
        tasks.build_task(config, str(tmp_path / "run2"))


def test_feature_cache_is_not_shared_by_seeds_with_reinitialised_layers(data_dir, tmp_path):
    # With reinit_top_k the top layers are random per seed: seed 1 used to read seed 0's features.
    from tl_jax import config as config_lib, tasks

    def task(seed, k):
        config = config_lib.load_config("configs/transfer_feature.py:minilm", [
            "data.max_train_examples=32", "data.max_eval_examples=8", "data.max_seq_length=16",
            "model.num_layers=2", f"probe.cache_dir={tmp_path / 'cache'}", f"seed={seed}",
            f"transfer.reinit_top_k={k}"])
        return tasks.build_task(config, str(tmp_path / f"run{seed}_{k}"))

    a, b = task(0, 1), task(1, 1)
    assert a._cache_file("train") != b._cache_file("train")
    assert not np.array_equal(a.train_arrays["features"][:, -1], b.train_arrays["features"][:, -1])
    # Without re-initialised layers the pretrained encoder is the same for every seed: shared.
    assert task(0, 0)._cache_file("train") == task(1, 0)._cache_file("train")


def test_feature_cache_is_not_reused_when_the_encoder_behind_the_path_changes(data_dir,
                                                                              tmp_path):
    # The key held the init_from path only: an encoder trained further in its workdir (a newer
    # checkpoint, the one loaded), or replaced weights in a HF folder, read the old features.
    import shutil

    from tl_jax import config as config_lib, tasks
    encoder = tmp_path / "minilm"
    shutil.copytree(data_dir / "models" / "all-MiniLM-L6-v2", encoder)

    def task(name):
        config = config_lib.load_config("configs/transfer_feature.py:minilm", [
            "data.max_train_examples=32", "data.max_eval_examples=8", "data.max_seq_length=16",
            "model.num_layers=1", f"probe.cache_dir={tmp_path / 'cache'}",
            f"init_from={encoder}"])
        return tasks.build_task(config, str(tmp_path / name))

    before = task("a")._cache_file("train")
    assert task("b")._cache_file("train") == before  # unchanged: shared
    weights = encoder / "model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # new weights, same name
    assert task("c")._cache_file("train") != before


def test_eval_features_of_a_vocabulary_trained_on_other_training_data_are_not_reused(tmp_path):
    # Without init_from and data.tokenizer the vocabulary is trained on the training text, so
    # the eval set's token ids depend on the training data; the eval cache key did not say so,
    # and a run on other training data read the eval features of another vocabulary.
    from tl_jax import config as config_lib, tasks

    def task(n_train, cache):
        config = config_lib.load_config("configs/transfer_feature.py:tiny", [
            f"data.max_train_examples={n_train}", "data.max_eval_examples=8",
            "data.max_seq_length=16", "data.tokenizer_vocab_size=200", "train.progress=False",
            *([f"probe.cache_dir={tmp_path / 'cache'}"] if cache else [])])
        return tasks.build_task(config, str(tmp_path / f"run{n_train}_{cache}"))

    task(32, cache=True)
    cached = task(64, cache=True).eval_arrays["features"]
    np.testing.assert_array_equal(cached, task(64, cache=False).eval_arrays["features"])
    assert len(list((tmp_path / "cache").glob("*eval*.npy"))) == 2


def test_the_feature_cache_loads_init_from_once_for_both_splits(data_dir, tmp_path, capsys):
    # Each split set the encoder up again: init_from was read (and said so) and the feature
    # pass compiled once for the training set and once more for the eval set.
    from tl_jax import config as config_lib, tasks

    config = config_lib.load_config("configs/transfer_feature.py:minilm", [
        "data.max_train_examples=32", "data.max_eval_examples=8", "data.max_seq_length=16",
        "model.num_layers=1", "train.progress=False"])
    task = tasks.build_task(config, str(tmp_path / "run"))
    assert capsys.readouterr().out.count("encoder loaded") == 1
    assert task.train_arrays["features"].shape == (32, 2, 384)
    assert task.eval_arrays["features"].shape == (8, 2, 384)
    assert "_frozen_encoder" not in vars(task)  # its weights are not kept once cached
    # The trainer's load (the weights its checkpoint keeps) does not say it again.
    example = task.example_batch(1)
    params = jax.jit(lambda r: task.init_variables(r, example)["params"])(jax.random.PRNGKey(0))
    task.init_params(nn.unbox(params), None)
    assert "encoder loaded" not in capsys.readouterr().out


@pytest.mark.parametrize("shown", [True, False])
def test_the_feature_cache_pass_shows_its_progress(tmp_path, capsys, monkeypatch, shown):
    # The encoder pass over every example printed nothing between the truncation notes and
    # the transfer table: minutes for the food reviews on a CPU, a run that looked hung.
    # A bar counts the examples (plain lines here, off a terminal); train.progress=False
    # silences it, and a split of one chunk (the 64 eval rows) is too quick for one.
    from tl_jax import config as config_lib, tasks

    monkeypatch.setenv("TL_JAX_PROGRESS_SECONDS", "0")
    config = config_lib.load_config("configs/transfer_feature.py:tiny", [
        "data.max_train_examples=192", f"train.progress={shown}"])
    task = tasks.build_task(config, str(tmp_path / "run"))
    assert task.train_arrays["features"].shape[0] == 192
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("[probe features")]
    if not shown:
        assert not lines, err
        return
    assert lines[-1].startswith("[probe features: train] example 192/192 (100%) | done in"), err
    assert len(lines) > 1  # a line per chunk at TL_JAX_PROGRESS_SECONDS=0, not only the last
    assert "[probe features: eval]" not in err


def test_a_frozen_encoder_counts_forward_flops_only(tmp_path):
    # MFU must not count a backward pass through an encoder that stop_gradient freezes (a
    # probe without the feature cache reported 127%).
    from tl_jax import config as config_lib, tasks
    from tl_jax.tasks import downstream

    def task(*overrides):
        config = config_lib.load_config("configs/transfer_feature.py:tiny", [
            "data.max_train_examples=32", "data.max_eval_examples=16", *overrides])
        return tasks.build_task(config, str(tmp_path / "_".join(overrides)))

    live = task("probe.feature=second_to_last", "probe.cache_features=False")
    full = downstream.encoder_flops(live.model_config, live.config.data.max_seq_length)
    assert full / 3 < live.flops_per_example < full / 3 * 1.05
    cached = task("probe.feature=second_to_last", "probe.cache_features=True")
    assert 0 < cached.flops_per_example < full / 100
    tuned = task("probe.feature=none", "probe.cache_features=False")
    assert tuned.flops_per_example == full


def test_a_feature_probe_whose_rules_train_the_encoder_is_an_error(data_dir, tmp_path):
    # The encoder's gradient is stopped, but with ('.*', 'train') it got optimizer state and
    # AdamW's weight decay changed the "frozen" encoder at every step, without a word.
    from tl_jax import config as config_lib, tasks

    config = config_lib.load_config("configs/transfer_feature.py:tiny", [
        "data.max_train_examples=32", "data.max_eval_examples=16", "data.max_seq_length=16",
        "probe.cache_features=False", "optimizer.weight_decay=0.1",
        "transfer.rules=(('.*', 'train'),)"])
    task = tasks.build_task(config, str(tmp_path / "probe"))
    with pytest.raises(ValueError, match=r"probe.feature='last' uses a frozen encoder, but "
                                         r"transfer rule '\.\*' trains"):
        task.make_optimizer(10)
    config.transfer.rules = ((r"bert/.*", "frozen"), (".*", "train"))
    tx, _ = tasks.build_task(config, str(tmp_path / "probe")).make_optimizer(10)


def test_feature_extraction_passes_the_weights_as_arguments_not_as_constants(tmp_path):
    # Closed over by the jitted feature function, the encoder's weights were embedded in the
    # program as constants: every compile folded them (seconds for MiniLM), once per run.
    import warnings

    from tl_jax import config as config_lib, tasks

    config = config_lib.load_config("configs/transfer_feature.py:tiny", [
        "data.max_train_examples=32", "data.max_eval_examples=16", "data.max_seq_length=16",
        "probe.cache_features=True"])
    previous = jax.config.jax_captured_constants_warn_bytes
    jax.config.update("jax_captured_constants_warn_bytes", 64 * 1024)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message="A large amount of constants")
            task = tasks.build_task(config, str(tmp_path / "probe"))
    finally:
        jax.config.update("jax_captured_constants_warn_bytes", previous)
    assert task.cached and task.train_arrays["features"].shape[0] == 32


def _single_device_features(task, arrays):
    """The feature cache as it was computed before it ran under the mesh: one plain jit on one
    device, in chunks of 64 rows (the reference the mesh's features must equal)."""
    example = task.example_batch(1)
    params = jax.jit(lambda r: task.init_variables(r, example)["params"])(
        jax.random.PRNGKey(task.config.seed))
    params = task.init_params(nn.unbox(params), None)
    features = jax.jit(task._features)
    keys = ("input_ids", "segment_ids", "input_mask")
    return np.concatenate([np.asarray(features(params, *(arrays[k][s:s + 64] for k in keys)))
                           for s in range(0, len(arrays["labels"]), 64)])


class _FeatureCalls:
    """Spies on `jax.jit(task._features)` as the feature cache compiles it: the arguments each
    call got (concrete, sharded arrays) and what it returned."""

    def __init__(self, monkeypatch):
        self.calls = []
        real_jit = jax.jit

        def jit(fn, *args, **kwargs):
            jitted = real_jit(fn, *args, **kwargs)
            if getattr(fn, "__name__", "") != "_features":
                return jitted

            def spy(*call_args):
                out = jitted(*call_args)
                self.calls.append((call_args, out))
                return out
            return spy
        monkeypatch.setattr(jax, "jit", jit)


@pytest.mark.parametrize("mesh,head", [
    (("mesh.data=8",), "linear"),
    (("mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"), "linear"),
    (("mesh.data=1", "mesh.fsdp=2", "mesh.tensor=4"), "linear"),
    (("mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"), "bilstm"),
])
def test_cached_features_are_encoded_under_the_mesh_as_on_one_device(mesh, head, tmp_path,
                                                                      monkeypatch):
    # The cache ran the encoder with a plain jit on one device: one of the 8 did all the work,
    # and an encoder too large for one device under fsdp / tensor sharding could not run. Now
    # the weights are sharded as the trainer shards them and every chunk of rows is split over
    # the data-parallel devices; the features are the single device's (float tolerance: the
    # sharded matmuls add in another order; the BiLSTM's token-level features are float16).
    from tl_jax import config as config_lib, parallel, tasks, train

    overrides = ["data.max_train_examples=70", "data.max_eval_examples=9",
                 "data.max_seq_length=16", "data.batch_size=8", *mesh]
    if head == "bilstm":
        overrides += ["probe.head=bilstm", "probe.feature=scalar_mix", "probe.lstm_hidden=8"]
    config = config_lib.load_config("configs/transfer_feature.py:tiny", overrides)
    spy = _FeatureCalls(monkeypatch)
    task = tasks.build_task(config, str(tmp_path / "run"))
    monkeypatch.undo()

    for split, records in (("train", task.train_records), ("eval", task.eval_records)):
        got = task.train_arrays if split == "train" else task.eval_arrays
        want = _single_device_features(task, task.encode(records))
        assert got["features"].shape == want.shape and got["features"].dtype == want.dtype
        tolerance = dict(rtol=1e-5, atol=1e-5) if head == "linear" else dict(rtol=4e-3, atol=1e-3)
        np.testing.assert_allclose(got["features"].astype(np.float32), want.astype(np.float32),
                                   err_msg=split, **tolerance)

    # Every chunk (64 rows: 70 train rows in 2, 9 eval rows in 1) ran on all 8 devices: rows
    # split over data x fsdp, the weights sharded exactly as the trainer's.
    assert len(spy.calls) == 3
    trainer = train.build_trainer(config, str(tmp_path / "run"), task=task)
    want_params = trainer.state_shardings["params"]
    rows = parallel.batch_sharding(trainer.mesh)
    for (params, *batch), out in spy.calls:
        for x in batch:
            assert isinstance(x, jax.Array), "host rows: the chunk went to one device"
            assert x.shape[0] == 64 and len(x.sharding.device_set) == 8
            assert x.sharding.is_equivalent_to(rows, x.ndim), x.sharding
        flat = jax.tree_util.tree_leaves_with_path(params)
        expected = dict(jax.tree_util.tree_leaves_with_path(want_params))
        assert len(flat) == len(expected)
        for path, leaf in flat:
            assert leaf.sharding.is_equivalent_to(expected[path], leaf.ndim), (
                jax.tree_util.keystr(path), leaf.sharding, expected[path])
        # The features come back split as the rows went in: no device holds a whole chunk's
        # (they came back replicated, an all-gather of every chunk onto every device).
        assert len(out.sharding.device_set) == 8
        assert out.sharding.is_equivalent_to(rows, out.ndim), out.sharding
        assert max(s.data.shape[0] for s in out.addressable_shards) < out.shape[0]
    if len(mesh) > 1:  # fsdp / tensor: some weights really are split over devices
        assert any(not leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(params))


BERT_BASE_TOKEN_ROW = 13 * 128 * 768 * 2  # token-level features of every layer, float16


@pytest.mark.parametrize("shards,processes,local_devices,row_bytes,rows", [
    # Up to 8 data shards: 64 rows as before (so the cached features are the same chunks).
    (1, 1, 1, 4096, 64), (8, 1, 8, 4096, 64), (4, 2, 4, 4096, 64), (6, 4, 3, 4096, 72),
    (3, 2, 3, 4096, 66),
    # More shards: 8 rows each, where 64 rows gave 4, 1, or (512 shards) a 512-row chunk anyway.
    (16, 1, 16, 4096, 128), (64, 1, 64, 4096, 512), (64, 8, 8, 4096, 512),
    (512, 64, 8, 4096, 4096), (96, 32, 3, 4096, 768), (24, 16, 3, 4096, 192),
    # Token-level BERT-base features (2.5 MB a row): 256 MiB holds 105 rows a device. One
    # process's devices each hold rows / shards of a chunk: 8 rows a shard fit (the cap on the
    # whole chunk, when every device held all of it, cut 64 shards to 1 row each).
    (8, 1, 8, BERT_BASE_TOKEN_ROW, 64), (64, 1, 64, BERT_BASE_TOKEN_ROW, 512),
    (32, 1, 32, BERT_BASE_TOKEN_ROW, 256), (6, 4, 3, BERT_BASE_TOKEN_ROW, 72),
    # Several processes: each one's devices hold the whole chunk between them on its way to the
    # host (rows / local devices each), cut to whole units, never below one.
    (64, 16, 4, BERT_BASE_TOKEN_ROW, 384), (512, 64, 8, BERT_BASE_TOKEN_ROW, 512),
    # Rows too large for 8 a device: whole rows per device up to 256 MiB, at least one unit.
    (8, 1, 8, 64 * 2**20, 32), (1, 1, 1, 2**30, 1),
])
def test_feature_cache_chunks_scale_with_the_data_shards(shards, processes, local_devices,
                                                         row_bytes, rows):
    from tl_jax.tasks import probe

    got = probe.encode_chunk_rows(shards, processes, row_bytes, local_devices=local_devices)
    assert got == rows
    assert got % shards == 0 and got % processes == 0
    if processes > 1:
        assert got % local_devices == 0  # the host-bound copy splits evenly over them
    per_shard = got // shards
    unit = math.lcm(shards, processes, local_devices if processes > 1 else 1)
    split = shards if processes == 1 else min(shards, local_devices)
    assert per_shard >= 1

    def fits(n):  # what one device holds of a chunk of n rows
        return n * row_bytes // split <= probe.ENCODE_MAX_DEVICE_BYTES

    # Either one device's features fit the budget, or the chunk is down to one unit.
    assert fits(got) or got == unit
    # The 8 rows per shard are wanted, and given whenever their features fit.
    if fits(unit * -(-8 * shards // unit)):
        assert per_shard >= 8
    # The old rule (at least 64 rows) on the meshes it served: the same chunk when it fits.
    if shards <= 8 and fits(unit * -(-64 // unit)):
        assert got == unit * -(-64 // unit)


def test_feature_cache_chunk_sizes_below_one_are_refused():
    from tl_jax.tasks import probe

    with pytest.raises(ValueError, match=r"encode_chunk_rows: batch_shards=0; expected >= 1"):
        probe.encode_chunk_rows(0, 1, 10)
    with pytest.raises(ValueError, match=r"row_bytes=0"):
        probe.encode_chunk_rows(8, 1, 0)
    with pytest.raises(ValueError, match=r"local_devices=0"):
        probe.encode_chunk_rows(8, 2, 10, local_devices=0)


def test_two_processes_cache_the_features_one_process_caches(data_dir, tmp_path):
    # Each of 2 processes (4 devices each) feeds its own rows of every chunk to the encoder
    # and gets every row's features back: 40 training rows (process 1 feeds 8 of a chunk of
    # 64), 21 eval rows (process 1 feeds padding only). The cache file process 0 writes, and
    # the probe trained on the features, are those of one process with 8 devices.
    import json

    from conftest import write_polarity_files
    from test_multiprocess import two_processes

    from tl_jax import config as config_lib, train

    files = write_polarity_files(data_dir, tmp_path, 21)
    overrides = [
        "train.progress=False", "data.max_seq_length=16", "data.batch_size=8",
        f"data.train_file={files / 'train.jsonl'}", f"data.eval_file={files / 'eval.jsonl'}",
        "data.max_train_examples=40", "data.max_eval_examples=0", "train.steps=4",
        "train.eval_every=2", "train.checkpoint_every=4", "train.log_every=1",
        "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"]
    multi = tmp_path / "multi"
    results = two_processes(["train", "--config=configs/transfer_feature.py:tiny",
                             f"--workdir={multi}", f"--config.probe.cache_dir={tmp_path / 'c2'}"]
                            + [f"--config.{o}" for o in overrides])
    for rc, _, err in results:
        assert rc == 0, err[-3000:]
    one = tmp_path / "one"
    train.train_and_evaluate(config_lib.load_config(
        "configs/transfer_feature.py:tiny", overrides + [f"probe.cache_dir={tmp_path / 'c1'}"]),
        str(one))

    for split, rows in (("train", 40), ("eval", 21)):
        [two_file] = (tmp_path / "c2").glob(f"probe_features_{split}_*.npy")
        [one_file] = (tmp_path / "c1").glob(f"probe_features_{split}_*.npy")
        assert two_file.name == one_file.name  # the same key
        got, want = np.load(two_file), np.load(one_file)
        assert got.shape == want.shape and got.shape[0] == rows
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=split)

    def metrics(workdir):
        return [json.loads(line) for line in open(workdir / "metrics.jsonl")]

    def figures(row):
        return {k: v for k, v in row.items() if k in ("loss", "accuracy") or k.startswith("eval/")}

    two_rows, one_rows = metrics(multi), metrics(one)
    assert [r["step"] for r in two_rows] == [r["step"] for r in one_rows]
    for a, b in zip(two_rows, one_rows):
        assert figures(a).keys() == figures(b).keys() and figures(a)
        for key, value in figures(a).items():
            assert value == pytest.approx(figures(b)[key], abs=1e-5), (a["step"], key)


@pytest.mark.parametrize("spec,overrides", [
    ("transfer_feature.py:tiny", []),  # cached features: the probe's own loss_fn
    ("transfer_full.py:tiny", ["data.positive_label=pos"])])
def test_probes_declare_the_eval_metrics_an_eval_reports(data_dir, tmp_path, spec, overrides):
    """`tasks.eval_metric_names` (what `tl_jax sweep --metrics=eval/...` is checked against
    before any run trains) is the task's declaration from the config: an eval reports exactly
    those names, whichever loss the probe trains with (binary F1 with data.positive_label)."""
    from conftest import write_polarity_files

    from tl_jax import config as config_lib, tasks, train

    files = write_polarity_files(data_dir, tmp_path, 21)
    config = config_lib.load_config(f"configs/{spec}", [
        "train.progress=False", "data.max_seq_length=16", "data.batch_size=8",
        f"data.train_file={files / 'train.jsonl'}", f"data.eval_file={files / 'eval.jsonl'}",
        "data.max_train_examples=16", "data.max_eval_examples=0", "mesh.num_devices=1",
        *overrides])
    trainer = train.build_trainer(config, str(tmp_path / "run"))
    params = trainer.init_state(jax.random.PRNGKey(0))["params"]
    reported = train.evaluate(trainer, params, 0)
    assert sorted(reported) == sorted(tasks.eval_metric_names(config))


LORA_RUN = ["data.max_train_examples=32", "data.max_eval_examples=16", "data.max_seq_length=16",
            "data.batch_size=16", "train.steps=2", "train.progress=False",
            "optimizer.learning_rate=0.05", "optimizer.warmup_steps=0",
            "model.dropout_rate=0.0", "model.attention_dropout_rate=0.0"]


@pytest.fixture(scope="module")
def lora_workdir(data_dir, tmp_path_factory):
    """A short configs/transfer_lora.py run (lora_rank 8, lora_alpha 16) whose LoRA trained."""
    from tl_jax import checkpoint, config as config_lib, train

    workdir = str(tmp_path_factory.mktemp("lora") / "run")
    train.train_and_evaluate(config_lib.load_config("configs/transfer_lora.py:tiny", LORA_RUN),
                             workdir)
    flat, _ = checkpoint.load_params_from_workdir(workdir)
    assert max(float(np.abs(v).max()) for p, v in flat.items() if p.endswith("lora_b")) > 0
    return workdir


def _lora_encoder(workdir, lora_alpha=None):
    """`(BertConfig, bert params)` of the encoder a LoRA workdir trained, as its run built it
    (lora_alpha=0.0: the encoder beneath its LoRA, as it was before the run)."""
    from tl_jax import checkpoint
    from tl_jax.interop import safetensors_io

    flat, step = checkpoint.load_params_from_workdir(workdir)
    resolved = checkpoint.config_from_workdir(workdir, step)["resolved_model"]
    config = bert.BertConfig(**resolved)
    assert (config.lora_rank, config.lora_alpha) == (8, 16.0)
    if lora_alpha is not None:
        config = config.replace(lora_alpha=lora_alpha)
    params = safetensors_io.unflatten_params(
        {p[len("bert/"):]: v for p, v in flat.items() if p.startswith("bert/")})
    return config, params


def _last_layer(config, params, arrays):
    """The top layer's hidden states of a BertModel (`config`, `params`) over `arrays`."""
    _, inter = bert.BertModel(config).apply({"params": params}, arrays["input_ids"],
                                            arrays["segment_ids"], arrays["input_mask"])
    return np.asarray(inter[f"layer_{config.num_layers}"])


def _pooled_by(task, arrays, encoder_config, params):
    """The probe `task`'s pooled features of `arrays` computed by another encoder (its config
    and bert params), for comparison with the features the probe cached."""
    model = task.model.clone(config=encoder_config.replace(dtype=task.model_config.dtype))
    layers, _ = model.apply({"params": {"bert": params}}, arrays["input_ids"],
                            arrays["segment_ids"], arrays["input_mask"], method=model.encode)
    return np.asarray(probes.pool(layers, arrays["input_mask"], model.pooling))


@pytest.mark.parametrize("model,source,taken", [
    ((8, 16.0), (8, 16.0), True),     # the same rank and scale: taken as they are
    ((4, 8.0), (8, 16.0), False),     # another rank (the same scale, 2): folded
    ((8, 4.0), (8, 16.0), False),     # the same rank, another lora_alpha: folded
    ((0, 16.0), (8, 16.0), False),    # no LoRA in the model: folded
    ((8, 16.0), (0, 16.0), False),    # no LoRA trained: nothing to take
    ((8, None), (8, 16.0), True),     # a scale not known: the ranks decide
    ((8, 16.0), (8, None), True),
])
def test_lora_pairs_are_taken_as_they_are_only_by_lora_of_the_same_rank_and_scale(model, source,
                                                                                  taken):
    """The one rule the warm start folds by and a probe's frozen-LoRA check reads."""
    from tl_jax import warm_start

    assert warm_start.lora_taken_as_is(*model, *source) is taken


@pytest.mark.parametrize("lora_rank,lora_alpha,how", [
    (0, 16.0, "merged 4 LoRA pairs"),     # no LoRA in the probe: folded into the kernels
    (4, 16.0, "merged 4 LoRA pairs"),     # LoRA of another rank: folded, its own starts fresh
    (8, 16.0, ""),                        # the same rank and scale: the pairs are taken
    (8, 4.0, "merged 4 LoRA pairs"),      # the same rank, another scale: folded
])
def test_a_probe_from_a_lora_workdir_encodes_with_the_trained_lora(lora_workdir, tmp_path, capsys,
                                                                   lora_rank, lora_alpha, how):
    """A probe whose init_from trained LoRA (configs/transfer_lora.py) listed lora_a / lora_b
    as unused source tensors and encoded with the pretrained kernels beneath them: features of
    an encoder that run never had. Its features are the LoRA model's."""
    from tl_jax import config as config_lib, tasks

    config = config_lib.load_config("configs/transfer_feature.py:tiny", [
        *LORA_RUN[:3], f"init_from={lora_workdir}", f"transfer.lora_rank={lora_rank}",
        f"transfer.lora_alpha={lora_alpha}", "train.progress=False"])
    if lora_rank:  # (the probe's encoder is frozen: its LoRA too)
        config.transfer.rules = ((r".*", "frozen"),)
    capsys.readouterr()
    task = tasks.build_task(config, str(tmp_path / "probe"))
    out = capsys.readouterr().out
    assert (how in out if how else "LoRA pairs" not in out) and "unused source" not in out
    arrays = task.encode(task.train_records)

    def pooled(lora_alpha=None):
        return _pooled_by(task, arrays, *_lora_encoder(lora_workdir, lora_alpha))

    features = task.train_arrays["features"]
    np.testing.assert_allclose(features, pooled(), atol=1e-5)
    assert np.abs(features - pooled(lora_alpha=0.0)).max() > 1e-3  # not the pre-LoRA encoder


def test_a_model_without_lora_warm_started_from_a_lora_workdir_computes_the_trained_encoder(
        lora_workdir, capsys):
    """Any BERT warm-started from a LoRA workdir without LoRA of its own (continued
    pretraining, an ELECTRA discriminator, a distillation student): the trained update is folded
    into the query / value kernels at the run's lora_alpha / rank, not left out as unused."""
    from tl_jax import warm_start

    lora_config, lora_params = _lora_encoder(lora_workdir)
    config = lora_config.replace(lora_rank=0, lora_alpha=1.0)
    model = bert.BertModel(config)
    ids = jnp.array([[2, 7, 9, 11, 3, 0], [2, 5, 3, 0, 0, 0]])
    mask = (ids > 0).astype(jnp.int32)
    fresh = {"bert": nn.unbox(model.init(jax.random.PRNGKey(0), ids)["params"])}
    capsys.readouterr()
    params = warm_start.warm_start(fresh, lora_workdir, config, only="bert/")["bert"]
    out = capsys.readouterr().out
    assert "merged 4 LoRA pairs into their kernels" in out and "unused source" not in out

    def last(config, params):
        _, inter = bert.BertModel(config).apply({"params": params}, ids, None, mask)
        return np.asarray(inter[f"layer_{config.num_layers}"])

    np.testing.assert_allclose(last(config, params), last(lora_config, lora_params), atol=1e-5)
    before = last(lora_config.replace(lora_alpha=0.0), lora_params)  # beneath the LoRA
    assert np.abs(last(config, params) - before).max() > 1e-3


def _fine_tuned_from(workdir, tmp_path, capsys, trained):
    """`(task, what its init_params printed)` of configs/finetune_classify.py warm-started from
    `workdir`, whose encoder is checked to compute `trained` (`(BertConfig, bert params)` of the
    encoder that workdir's run trained): the top layer over the training set."""
    from tl_jax import config as config_lib, tasks

    config = config_lib.load_config("configs/finetune_classify.py:tiny", [
        *LORA_RUN[:3], f"init_from={workdir}", "train.progress=False"])
    task = tasks.build_task(config, str(tmp_path / "classify"))
    fresh = nn.unbox(task.init_variables(jax.random.PRNGKey(0), task.example_batch(2))["params"])
    capsys.readouterr()
    params = task.init_params(fresh, None)
    out = capsys.readouterr().out
    arrays = task.encode(task.train_records)
    np.testing.assert_allclose(_last_layer(task.model_config, params["bert"], arrays),
                               _last_layer(*trained, arrays), atol=1e-5)
    return task, out


def test_fine_tuning_from_a_lora_workdir_builds_and_takes_its_lora(lora_workdir, tmp_path,
                                                                  capsys):
    """The fine-tuning tasks read init_from's shape from its checkpoint, LoRA included (rank from
    the shapes, lora_alpha from its resolved_model): the pairs are taken as they are, and the
    encoder computes what the LoRA run trained."""
    task, out = _fine_tuned_from(lora_workdir, tmp_path, capsys, _lora_encoder(lora_workdir))
    assert (task.model_config.lora_rank, task.model_config.lora_alpha) == (8, 16.0)
    assert "LoRA pairs" not in out and "unused source" not in out


def test_a_probe_run_with_a_feature_cache_reports_its_init_from_once(lora_workdir, tmp_path,
                                                                     capsys):
    """A cached probe loads init_from twice, for the feature pass and again in the trainer (the
    weights its checkpoint holds): every [init_from] line was printed twice in one run."""
    from tl_jax import config as config_lib, train

    config = config_lib.load_config("configs/transfer_feature.py:tiny", [
        *LORA_RUN, f"init_from={lora_workdir}", "transfer.reinit_top_k=1"])
    assert config.probe.cache_features
    capsys.readouterr()
    train.train_and_evaluate(config, str(tmp_path / "probe"))
    out = capsys.readouterr().out.splitlines()
    lines = [line for line in out if line.startswith("[init_from]")]
    assert sum(f"{lora_workdir} (step 2): took " in line for line in lines) == 1, lines
    assert sum("merged 4 LoRA pairs" in line for line in lines) == 1, lines
    assert len(lines) == len(set(lines)), lines
    # reinit_top_k's line too, said at the first load
    assert sum(line.startswith("[transfer] reinit_top_k=1:") for line in out) == 1, out


@pytest.fixture(scope="module")
def adapters_workdir(data_dir, tmp_path_factory):
    """A short configs/transfer_adapters.py run (adapter_size 8, encoder frozen)."""
    from tl_jax import config as config_lib, train

    workdir = str(tmp_path_factory.mktemp("adapters") / "run")
    train.train_and_evaluate(
        config_lib.load_config("configs/transfer_adapters.py:tiny", LORA_RUN), workdir)
    return workdir


def _adapters_encoder(workdir, with_adapters=True):
    """`(BertConfig, bert params)` of the encoder an adapters workdir trained, as its run built
    it (with_adapters=False: the encoder beneath its adapters, as it was before the run)."""
    from tl_jax import checkpoint
    from tl_jax.interop import safetensors_io

    flat, step = checkpoint.load_params_from_workdir(workdir)
    config = bert.BertConfig(**checkpoint.config_from_workdir(workdir, step)["resolved_model"])
    assert config.adapter_size == 8
    flat = {p[len("bert/"):]: v for p, v in flat.items() if p.startswith("bert/")}
    if not with_adapters:
        config = config.replace(adapter_size=0)
        flat = {p: v for p, v in flat.items() if "_adapter/" not in p}
    return config, safetensors_io.unflatten_params(flat)


@pytest.mark.parametrize("adapter_size", [0, 8])
def test_a_probe_from_an_adapters_workdir_encodes_with_the_trained_adapters(
        adapters_workdir, tmp_path, capsys, adapter_size):
    """A probe whose init_from trained bottleneck adapters (configs/transfer_adapters.py) kept
    its own adapters fresh (adapter_size 8), or had none and listed the trained ones as unused
    (adapter_size 0): either way it encoded with an encoder that run never had. It builds and
    takes them: its features are the adapter model's."""
    from tl_jax import config as config_lib, tasks

    config = config_lib.load_config("configs/transfer_feature.py:tiny", [
        *LORA_RUN[:3], f"init_from={adapters_workdir}", f"transfer.adapter_size={adapter_size}",
        "train.progress=False"])
    capsys.readouterr()
    task = tasks.build_task(config, str(tmp_path / "probe"))
    out = capsys.readouterr().out
    arrays = task.encode(task.train_records)

    def pooled(with_adapters=True):
        return _pooled_by(task, arrays, *_adapters_encoder(adapters_workdir, with_adapters))

    features = task.train_arrays["features"]
    np.testing.assert_allclose(features, pooled(), atol=1e-5)
    assert np.abs(features - pooled(with_adapters=False)).max() > 1e-3  # not beneath them
    assert "unused source" not in out and task.model_config.adapter_size == 8


def test_a_fine_tuned_probe_may_keep_init_froms_adapters_frozen(adapters_workdir, tmp_path):
    """Adapters taken from init_from are trained ones: frozen with the encoder they are no
    "fresh tensors that would never train" (only the head trains over the adapted encoder)."""
    from tl_jax import config as config_lib, tasks

    config = config_lib.load_config("configs/transfer_adapters.py:tiny", [
        *LORA_RUN[:3], f"init_from={adapters_workdir}", "train.progress=False"])
    config.transfer.rules = ((r"bert/.*", "frozen"), (r".*", "train"))
    task = tasks.build_task(config, str(tmp_path / "probe"))
    task.make_optimizer(10)
    plan = task.transfer_plan
    assert not any(plan.optimizer_mask[p] for p in plan.paths if "_adapter/" in p)


def test_a_fine_tuned_probe_may_keep_init_froms_lora_frozen(lora_workdir, tmp_path):
    """LoRA pairs taken from init_from (the same rank and scale) are trained ones: frozen with
    the encoder they are no "fresh tensors that would never train". Of another rank they are
    folded into the kernels and the probe's own start fresh: frozen, those are refused."""
    from tl_jax import config as config_lib, tasks

    for rank, refused in ((8, False), (4, True)):
        config = config_lib.load_config("configs/transfer_lora.py:tiny", [
            *LORA_RUN[:3], f"init_from={lora_workdir}", "train.progress=False",
            f"transfer.lora_rank={rank}"])
        config.transfer.rules = ((r"bert/.*", "frozen"), (r".*", "train"))
        task = tasks.build_task(config, str(tmp_path / f"probe{rank}"))
        if refused:
            with pytest.raises(ValueError, match=r"add \d+ fresh tensors .* would never train"):
                task.make_optimizer(10)
            continue
        task.make_optimizer(10)
        plan = task.transfer_plan
        assert not any(plan.optimizer_mask[p] for p in plan.paths if "/lora_" in p)


def test_a_probe_with_adapters_of_another_size_than_init_froms_is_refused(adapters_workdir,
                                                                       tmp_path):
    """Adapters of another size cannot take the trained ones, and fresh ones would sit on the
    encoder beneath them: refused before any data is encoded, saying what to set."""
    from tl_jax import config as config_lib, tasks

    config = config_lib.load_config("configs/transfer_adapters.py:tiny", [
        *LORA_RUN[:3], f"init_from={adapters_workdir}", "transfer.adapter_size=4",
        "train.progress=False"])
    with pytest.raises(ValueError, match=r"transfer.adapter_size=4, but init_from=.*"
                       r"adapters of size 8.*set transfer.adapter_size=8") as e:
        tasks.build_task(config, str(tmp_path / "probe"))
    assert adapters_workdir in str(e.value)


def test_a_model_without_adapters_warm_started_from_an_adapters_workdir_is_refused(
        adapters_workdir):
    """Any BERT warm-started from an adapters workdir without adapters of that size (continued
    pretraining, an ELECTRA discriminator): adapters cannot be folded into the kernels, and
    left out as unused they computed the encoder beneath them. Refused, naming the source and
    its adapter size; adapters of the same size take them."""
    from tl_jax import warm_start

    adapters_config, adapters_params = _adapters_encoder(adapters_workdir)
    ids = jnp.array([[2, 7, 9, 11, 3, 0], [2, 5, 3, 0, 0, 0]])
    mask = (ids > 0).astype(jnp.int32)

    def fresh(config):
        return {"bert": nn.unbox(bert.BertModel(config).init(jax.random.PRNGKey(0), ids)["params"])}

    for size, has in ((0, "no adapters"), (4, "adapters of size 4")):
        with pytest.raises(warm_start.WarmStartError) as e:
            warm_start.warm_start(fresh(adapters_config.replace(adapter_size=size)),
                                  adapters_workdir, only="bert/")
        message = str(e.value)
        assert (f"init_from={adapters_workdir!r} (step 2) trained bottleneck adapters "
                f"(adapter_size=8;" in message), message
        assert f"this model has {has}" in message and "adapters of size 8" in message
    params = warm_start.warm_start(fresh(adapters_config), adapters_workdir, only="bert/")["bert"]

    def last(config, params):
        _, inter = bert.BertModel(config).apply({"params": params}, ids, None, mask)
        return np.asarray(inter[f"layer_{config.num_layers}"])

    np.testing.assert_allclose(last(adapters_config, params),
                               last(adapters_config, adapters_params), atol=1e-6)
    # Adapters of the layers a shallower model leaves out stay behind with those layers.
    shallow = adapters_config.replace(num_layers=1)
    warm_start.warm_start(fresh(shallow), adapters_workdir, only="bert/")


def test_fine_tuning_from_an_adapters_workdir_builds_and_takes_its_adapters(adapters_workdir,
                                                                           tmp_path, capsys):
    """The fine-tuning tasks read init_from's shape from its checkpoint, adapters included: they
    are taken as they are, and the encoder computes what the adapters run trained."""
    task, out = _fine_tuned_from(adapters_workdir, tmp_path, capsys,
                                 _adapters_encoder(adapters_workdir))
    assert task.model_config.adapter_size == 8
    assert "unused source" not in out


def test_an_electra_run_from_an_adapters_workdir_is_told_the_key_to_set(
        adapters_workdir, tiny_bert_overrides, tmp_path):
    """ELECTRA pretraining warm-started from an adapters workdir is refused (its discriminator
    has no adapters), and the error names what that config can set: init_from, since
    ELECTRA's model.size is a size name. It told the user to set model.size to init_from,
    BERT pretraining's remedy, which ELECTRA refuses as an unknown size."""
    from tl_jax import config as config_lib, tasks, warm_start

    overrides = [o for o in tiny_bert_overrides if not o.startswith("data.tokenizer=")]
    config = config_lib.load_config("configs/electra_pretrain.py:tiny",
                                    overrides + [f"init_from={adapters_workdir}"])
    task = tasks.build_task(config, str(tmp_path / "electra"))
    fresh = nn.unbox(task.init_variables(jax.random.PRNGKey(0), task.example_batch(2))["params"])
    with pytest.raises(warm_start.WarmStartError) as e:
        task.init_params(fresh, None)
    message = str(e.value)
    assert "trained bottleneck adapters (adapter_size=8;" in message, message
    assert "ELECTRA pretraining builds its discriminator from a size name" in message, message
    assert "set init_from to the encoder those adapters were trained on" in message, message


def test_a_resumed_probe_needs_no_init_from_and_encodes_with_its_checkpoint(
        lora_workdir, tmp_path, capsys):
    """A probe's checkpoint holds its frozen encoder, but its resume read init_from for the
    encoder's shape (its resolved_model adds transfer's LoRA and adapters, so it is not that
    shape) and for the feature cache's weights: init_from moved or deleted stopped it with
    "does not exist". The encoder's shape is saved beside the checkpoints (encoder_model.json:
    here the LoRA run's rank 8, which the probe's own model, lora_rank 0, has folded away), and
    the feature pass takes the checkpoint's encoder: the same features as the run's start. A
    changed model config is still refused, a new run still needs init_from, and a workdir saved
    before the file reads init_from as it did."""
    import json
    import shutil

    from tl_jax import checkpoint, config as config_lib, train, warm_start
    from tl_jax.tasks import downstream

    source = tmp_path / "source"
    shutil.copytree(lora_workdir, source)

    def config(steps, *more):
        return config_lib.load_config("configs/transfer_feature.py:tiny", [
            *LORA_RUN, f"init_from={source}", f"train.steps={steps}", "train.eval_every=0",
            "train.checkpoint_every=2", "transfer.reinit_top_k=1", *more])

    workdir = str(tmp_path / "probe")
    first = train.train_and_evaluate(config(2), workdir).trainer.task
    assert first.cached and first.model_config.lora_rank == 0
    with open(os.path.join(workdir, downstream.ENCODER_MODEL_FILE)) as f:
        assert bert.BertConfig(**json.load(f)) == first.encoder.model_config
    assert first.encoder.model_config.lora_rank == 8

    shutil.rmtree(source)
    capsys.readouterr()
    resumed = train.train_and_evaluate(config(4), workdir)
    out = capsys.readouterr().out
    assert "Resuming from step 2" in out and f"init_from={source} is gone" in out, out
    assert out.count("is gone") == 1 and "the feature pass encodes with the frozen encoder of" in (
        out), out  # said once, not again by the feature pass
    task = resumed.trainer.task
    assert resumed.summary["step"] == 4 and task.encoder.resumed
    assert task.encoder.model_config == first.encoder.model_config
    assert task.model_config == first.model_config
    # The frozen encoder (the LoRA folded in, the top layer re-initialised) is the checkpoint's.
    for split in ("train_arrays", "eval_arrays"):
        np.testing.assert_array_equal(getattr(task, split)["features"],
                                      getattr(first, split)["features"])

    with pytest.raises(checkpoint.CheckpointError,
                       match=r"model\.num_layers: checkpoint has 0, config has 1"):
        train.train_and_evaluate(config(6, "model.num_layers=1"), workdir)
    with pytest.raises(warm_start.WarmStartError, match=r"init_from='.*source' does not exist"):
        train.train_and_evaluate(config(2), str(tmp_path / "new"))
    # Every checkpoint damaged as well: one error saying where the encoder could have been.
    saved = tmp_path / "saved_checkpoints"
    shutil.copytree(os.path.join(workdir, "checkpoints"), saved)
    for f in pathlib.Path(workdir, "checkpoints").rglob("*"):
        if f.is_file() and "state" in f.parts:
            f.write_bytes(b"garbage")
    with pytest.raises(checkpoint.CheckpointError, match=(
            r"^Checkpoint at step 4 in .*checkpoints has an unreadable state/_METADATA .* With "
            rf"init_from={source} gone, the probe's frozen encoder can only come from this "
            r"workdir's checkpoints: put init_from back")):
        train.train_and_evaluate(config(6), workdir)
    shutil.rmtree(os.path.join(workdir, "checkpoints"))
    shutil.copytree(saved, os.path.join(workdir, "checkpoints"))
    # A workdir from before encoder_model.json: its resume reads init_from, as it did.
    os.remove(os.path.join(workdir, downstream.ENCODER_MODEL_FILE))
    with pytest.raises(warm_start.WarmStartError, match=r"init_from='.*source' does not exist"):
        train.train_and_evaluate(config(6), workdir)


@pytest.mark.parametrize("spec", ["configs/transfer_feature.py:tiny",
                                  "configs/finetune_classify.py:tiny"])
def test_a_run_from_scratch_resumes_without_its_model_size_directory(spec, data_dir, tmp_path,
                                                                     capsys):
    """A run from scratch may take its encoder's architecture (not its weights) from a
    model.size directory: the from-scratch arm of a transfer experiment. A probe's resume read
    that directory again and stopped when it had been moved; the shape is now the one it saved
    (encoder_model.json), as a fine-tuning run's is its resolved_model, and both say the
    directory is gone."""
    from tl_jax import config as config_lib, train

    link = tmp_path / "minilm"
    link.symlink_to(data_dir / "models" / "all-MiniLM-L6-v2")

    def config(steps):
        return config_lib.load_config(spec, [
            *LORA_RUN, f"model.size={link}", f"data.tokenizer={link}", "model.num_layers=1",
            f"train.steps={steps}", "train.eval_every=0", "train.checkpoint_every=2"])

    workdir = str(tmp_path / "run")
    first = train.train_and_evaluate(config(2), workdir).trainer.task
    assert first.encoder.model_config.hidden_size == 384 and not first.encoder.init_from
    link.unlink()
    capsys.readouterr()
    resumed = train.train_and_evaluate(config(4), workdir)
    out = capsys.readouterr().out
    assert "Resuming from step 2" in out, out
    assert f"model.size={link} is gone: the run resumes from its checkpoint" in out, out
    assert out.count("is gone") == 1, out
    assert resumed.summary["step"] == 4
    assert resumed.trainer.task.encoder.model_config == first.encoder.model_config
