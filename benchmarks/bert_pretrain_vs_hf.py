"""Pretraining-step throughput and MFU: tl_jax vs Hugging Face `BertForPreTraining` (PyTorch).

    python benchmarks/bert_pretrain_vs_hf.py            # mini and base
    python benchmarks/bert_pretrain_vs_hf.py --settings mini --steps 10 --repeats 3

Both sides run the same model shape, sequence length, batch and optimizer (AdamW, clipping),
in this process, on all of this machine's cores, in alternating timed blocks (best block
counts). tl_jax runs the real trainer's jitted step
(`tl_jax.train.build_trainer`); HF runs forward, backward and `torch.optim.AdamW.step`.
MFU is measured against the f32 matmul peak this script measures first. Both MFU figures count
the same model FLOPs (tl_jax's, with the MLM decoder at the masked positions), so the ratio of
MFUs equals the ratio of throughputs; HF's own work is larger because it decodes every position.

On a GPU (JAX's default backend `gpu` and `torch.cuda` available) PyTorch runs on the same GPU
and the peak is measured there in the compute dtype (`--dtype`); float32 matmuls are TF32 on
both sides (XLA's default; PyTorch's is full float32, so it is set to match), or full float32
on both with `--f32_matmul=highest`; `--settings base_b128` is
BERT's phase-1 shape with a batch that fills a GPU.

Do not run under `--xla_force_host_platform_device_count`: fake devices split the CPU.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Before anything runs JAX: tl_jax's host memory policy (freed memory kept for reuse) then holds
# for the whole process, so for both sides of the comparison.
from tl_jax import host_memory  # noqa: E402


def print_host_memory() -> None:
    print(f"host memory: freed memory kept for reuse (tl_jax/host_memory.py): "
          f"{host_memory.keep_freed_memory()}, for both sides (one process)")

SETTINGS = {
    # name: (size, seq_len, batch, max_predictions)
    "mini": ("mini", 128, 32, 20),
    "base": ("base", 128, 8, 20),
    "base_b128": ("base", 128, 128, 20),
}
# What runs without --settings: the README's CPU rows. base_b128 is for a GPU (on 2 CPU cores
# each of its steps takes 16 of base's), so only where asked for.
DEFAULT_SETTINGS = ["mini", "base"]
VOCAB = 30522


def on_gpu() -> bool:
    import jax
    import torch
    return jax.default_backend() == "gpu" and torch.cuda.is_available()


def measure_matmul_peak(n: int = 2048, repeats: int = 10, dtype: str = "float32") -> float:
    """Best matmul FLOP/s of this machine through XLA (all cores, or the GPU)."""
    import jax
    import jax.numpy as jnp
    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), dtype)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        f(a).block_until_ready()
        best = max(best, 2 * n ** 3 / (time.perf_counter() - t))
    return best


def random_batch(rng, batch, seq, preds):
    input_ids = rng.integers(5, VOCAB, size=(batch, seq)).astype(np.int32)
    positions = np.sort(np.stack([rng.choice(np.arange(1, seq), preds, replace=False)
                                  for _ in range(batch)]), axis=1).astype(np.int32)
    return dict(
        input_ids=input_ids,
        segment_ids=(np.arange(seq)[None, :] >= seq // 2).astype(np.int32).repeat(batch, 0),
        input_mask=np.ones((batch, seq), np.int32),
        masked_positions=positions,
        masked_ids=np.take_along_axis(input_ids, positions, 1),
        masked_weights=np.ones((batch, preds), np.float32),
        nsp_labels=rng.integers(0, 2, size=(batch,)).astype(np.int32),
    )


def setup_tl_jax(size, seq, batch, preds, workdir, dtype="float32"):
    """Returns (run(steps) -> seconds per step, training FLOPs per step)."""
    import jax
    from tl_jax import config as config_lib, parallel, train
    vocab_file = os.path.join(workdir, "vocab.txt")
    with open(vocab_file, "w") as f:  # a vocabulary of the benchmark's size; content irrelevant
        f.write("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
                          + [f"w{i}" for i in range(VOCAB - 5)]) + "\n")
    config = config_lib.load_config(str(ROOT / "configs/bert_pretrain.py") + f":{size}", [
        f"data.max_seq_length={seq}", f"data.batch_size={batch}",
        f"data.max_predictions_per_seq={preds}", f"data.tokenizer={vocab_file}",
        "data.corpus=gensim:lee", "train.progress=False", "model.dropout_rate=0.1",
        f"model.dtype={dtype}",
    ])
    trainer = train.build_trainer(config, workdir)
    state = trainer.init_state(jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    batches = [parallel.host_batch_to_global(random_batch(rng, batch, seq, preds), trainer.mesh)
               for _ in range(2)]
    holder = {"state": state}

    def run(steps):
        state = holder["state"]
        t = time.perf_counter()
        for i in range(steps):
            state, m = trainer.train_step(state, batches[i % 2])
        jax.block_until_ready(m)
        holder["state"] = state
        return (time.perf_counter() - t) / steps

    run(2)  # compile + warm up
    return run, trainer.task.flops_per_example * batch


def setup_hf(size, seq, batch, preds, dtype="float32"):
    """Returns run(steps) -> seconds per step."""
    import torch
    from transformers import BertConfig, BertForPreTraining
    from tl_jax.models.bert import SIZES
    layers, hidden, heads = SIZES[size]
    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count())
    device = "cuda" if on_gpu() else "cpu"
    model = BertForPreTraining(BertConfig(
        vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=4 * hidden, max_position_embeddings=512)).to(device)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    b = random_batch(np.random.default_rng(0), batch, seq, preds)
    labels = np.full((batch, seq), -100, np.int64)
    np.put_along_axis(labels, b["masked_positions"], b["masked_ids"], 1)
    inputs = dict(input_ids=torch.tensor(b["input_ids"], dtype=torch.long),
                  token_type_ids=torch.tensor(b["segment_ids"], dtype=torch.long),
                  attention_mask=torch.tensor(b["input_mask"], dtype=torch.long),
                  labels=torch.tensor(labels),
                  next_sentence_label=torch.tensor(b["nsp_labels"], dtype=torch.long))
    return torch_step_timer(model, opt, inputs, device, dtype)


def torch_step_timer(model, opt, inputs, device, dtype):
    """HF's training step on `inputs` (forward, backward, clipping at 1.0, `opt.step`), warmed
    up; returns run(steps) -> seconds per step (synchronised on a GPU)."""
    import torch
    inputs = {k: v.to(device) for k, v in inputs.items()}

    def step():
        opt.zero_grad(set_to_none=True)
        # bfloat16: PyTorch's own mixed precision (autocast; params and optimizer stay f32).
        with torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            loss = model(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    def run(steps):
        t = time.perf_counter()
        for _ in range(steps):
            step()
        if device == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t) / steps

    run(2)  # warm up
    return run


def match_float32_matmuls(mode: str) -> None:
    """Gives both sides the same float32 matmul arithmetic on a GPU. XLA runs float32 dots in
    TF32 there by default, PyTorch (since 1.12) in full float32: left alone, a float32
    comparison would time tl_jax on TF32 tensor cores against PyTorch without them. `tf32`
    (the default, XLA's own) lets PyTorch use TF32 too; `highest` makes both use full float32
    (and the measured peak with them). On a CPU both are full float32 already; nothing changes."""
    if not on_gpu():
        return
    import jax
    import torch
    if mode == "highest":
        jax.config.update("jax_default_matmul_precision", "highest")
        torch.set_float32_matmul_precision("highest")
    else:
        torch.set_float32_matmul_precision("high")  # TF32, as XLA's default precision
    print(f"float32 matmuls on the GPU: {mode} on both sides")


def measure_peak(dtype: str) -> float:
    """The matmul peak MFU is measured against, printed: on a GPU in the compute dtype, on a
    CPU in float32 (also for bfloat16: AMX bf16 can pass 100% of it, see the README)."""
    if on_gpu():
        import torch
        peak_dtype, where = dtype, torch.cuda.get_device_name()
        peak = measure_matmul_peak(8192, dtype=peak_dtype)
    else:
        peak_dtype, where = "float32", f"{os.cpu_count()} cores"
        peak = measure_matmul_peak()
    print(f"measured {peak_dtype} matmul peak: {peak / 1e9:,.1f} GFLOP/s ({where})")
    return peak


def positive_int(text: str) -> int:
    """argparse type of a count or size: a whole number, at least 1. Checked before anything is
    built: `--steps 0` used to fail only after minutes of compiling, in a division by zero."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def description(doc: str) -> str:
    """The first paragraph of a script's docstring, for `--help` (its first line alone stops
    mid-sentence)."""
    return " ".join(doc.split("\n\n")[0].split())


def add_timing_args(parser, steps: int) -> None:
    """--steps, --repeats and --dtype, shared by the HF comparison scripts."""
    parser.add_argument("--steps", type=positive_int, default=steps,
                        help="steps per timed block (default %(default)s)")
    parser.add_argument("--repeats", type=positive_int, default=3,
                        help="timed blocks per side, alternating tl_jax and HF; the best counts "
                             "(this machine's speed drifts by 10-25%% over minutes)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                        help="compute dtype of both sides; bfloat16 = mixed precision (tl_jax's "
                             "model.dtype, PyTorch's autocast), params and optimizer in f32")
    parser.add_argument("--f32_matmul", default="tf32", choices=["tf32", "highest"],
                        help="on a GPU, the float32 matmul arithmetic of both sides: TF32 "
                             "(XLA's default; PyTorch is set to match) or full float32")


def refuse_fake_devices() -> None:
    if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        sys.exit("Unset XLA_FLAGS=--xla_force_host_platform_device_count: it splits the CPU.")


def best_alternating(run_a, run_b, repeats: int, steps: int) -> tuple[float, float]:
    """Best seconds per step of each side over `repeats` alternating timed blocks."""
    a = b = float("inf")
    for _ in range(repeats):
        a = min(a, run_a(steps))
        b = min(b, run_b(steps))
    return a, b


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description(__doc__))
    parser.add_argument("--settings", nargs="+", default=DEFAULT_SETTINGS, choices=list(SETTINGS),
                        help="model size, seq and batch of each comparison: "
                             + ", ".join(f"{name} = BERT-{size} {batch} x {seq}"
                                         for name, (size, seq, batch, _) in SETTINGS.items())
                             + " (default: %(default)s)")
    add_timing_args(parser, steps=10)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    refuse_fake_devices()
    print_host_memory()
    match_float32_matmuls(args.f32_matmul)
    peak = measure_peak(args.dtype)
    print(f"{'setting':8} {'tl_jax tok/s':>13} {'HF tok/s':>10} {'ratio':>6} "
          f"{'tl_jax MFU':>10} {'HF MFU':>7}")
    for name in args.settings:
        size, seq, batch, preds = SETTINGS[name]
        with tempfile.TemporaryDirectory() as workdir:
            run_jax, flops = setup_tl_jax(size, seq, batch, preds, workdir, args.dtype)
            run_hf = setup_hf(size, seq, batch, preds, args.dtype)
            jax_s, hf_s = best_alternating(run_jax, run_hf, args.repeats, args.steps)
        tokens = seq * batch
        print(f"{name:8} {tokens / jax_s:13,.0f} {tokens / hf_s:10,.0f} {hf_s / jax_s:6.2f} "
              f"{flops / jax_s / peak:10.1%} {flops / hf_s / peak:7.1%}", flush=True)


if __name__ == "__main__":
    main()
