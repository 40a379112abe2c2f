"""Fine-tuning-step throughput: tl_jax's `classify` task vs Hugging Face
`BertForSequenceClassification` (PyTorch), both starting from the real all-MiniLM-L6-v2.

    TL_JAX_DATA_DIR=../shared/data python benchmarks/finetune_vs_hf.py
    TL_JAX_DATA_DIR=../shared/data python benchmarks/finetune_vs_hf.py --batch 32 --seq 128

Both sides fine-tune the same weights on the same batch of real food reviews (tl_jax's
tokenization of `food_reviews_train.jsonl`, fed to both), with dropout 0.1, AdamW with weight
decay and global-norm clipping at 1.0, in alternating timed blocks in this process (the best block
of each counts). tl_jax runs the trainer's jitted step (`tl_jax.train.build_trainer` on
`configs/finetune_classify.py:minilm`); HF runs forward, backward, clipping and
`torch.optim.AdamW.step`. MFU is against the matmul peak this script measures first, with the same
model FLOPs for both sides. On a GPU (JAX's default backend `gpu` and `torch.cuda` available)
PyTorch runs on the same GPU, both sides with TF32 float32 matmuls (`--f32_matmul=highest`:
full float32 on both).

Do not run under `--xla_force_host_platform_device_count`: fake devices split the CPU.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time


ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bert_pretrain_vs_hf import (  # noqa: E402
    add_timing_args, best_alternating, description, match_float32_matmuls, measure_peak, on_gpu,
    positive_int, print_host_memory, refuse_fake_devices, torch_step_timer)


MINILM_POSITIONS = 512  # all-MiniLM-L6-v2's max_position_embeddings


def setup_tl_jax(batch, seq, workdir, dtype):
    """Returns (run(steps) -> seconds per step, the batch as numpy, model FLOPs per step)."""
    import jax
    from tl_jax import config as config_lib, parallel, train
    config = config_lib.load_config(str(ROOT / "configs/finetune_classify.py") + ":minilm", [
        f"data.batch_size={batch}", f"data.max_seq_length={seq}", "train.progress=False",
        f"data.max_train_examples={4 * batch}", f"data.max_eval_examples={batch}",
        f"model.dtype={dtype}",
    ])
    trainer = train.build_trainer(config, workdir)
    state = trainer.init_state(jax.random.PRNGKey(0))
    arrays = trainer.task.train_arrays
    host = {k: v[:batch] for k, v in arrays.items()}
    batches = [parallel.host_batch_to_global(host, trainer.mesh)]
    holder = {"state": state}

    def run(steps):
        state = holder["state"]
        t = time.perf_counter()
        for _ in range(steps):
            state, m = trainer.train_step(state, batches[0])
        jax.block_until_ready(m)
        holder["state"] = state
        return (time.perf_counter() - t) / steps

    run(2)  # compile + warm up
    flops = trainer.task.flops_per_example * batch * train.frozen_flops_share(trainer.task,
                                                                             trainer)
    return run, host, flops, config.init_from


def setup_hf(init_from, host, dtype):
    """Returns run(steps) -> seconds per step."""
    import torch
    from transformers import BertForSequenceClassification
    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count())
    device = "cuda" if on_gpu() else "cpu"
    model = BertForSequenceClassification.from_pretrained(
        init_from, num_labels=2, hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1).to(device).train()
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias") or "LayerNorm" in n]
    decay = [p for n, p in model.named_parameters() if not (n.endswith("bias") or "LayerNorm" in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                             {"params": no_decay, "weight_decay": 0.0}], lr=5e-5)
    inputs = dict(input_ids=torch.tensor(host["input_ids"], dtype=torch.long),
                  token_type_ids=torch.tensor(host["segment_ids"], dtype=torch.long),
                  attention_mask=torch.tensor(host["input_mask"], dtype=torch.long),
                  labels=torch.tensor(host["labels"], dtype=torch.long))
    return torch_step_timer(model, opt, inputs, device, dtype)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description(__doc__))
    parser.add_argument("--batch", type=positive_int, default=32,
                        help="reviews per step, both sides (default %(default)s)")
    parser.add_argument("--seq", type=positive_int, default=128,
                        help="tokens per review, both sides (default %(default)s; at most "
                             f"{MINILM_POSITIONS}, MiniLM's position table)")
    add_timing_args(parser, steps=5)
    args = parser.parse_args(argv)
    if args.seq > MINILM_POSITIONS:  # the library refused it too, but after loading MiniLM
        parser.error(f"argument --seq: MiniLM has {MINILM_POSITIONS} positions, got {args.seq}")
    return args


def main(argv=None):
    args = parse_args(argv)
    refuse_fake_devices()
    if not os.environ.get("TL_JAX_DATA_DIR"):
        sys.exit("Set TL_JAX_DATA_DIR to the shared data folder (MiniLM and the food reviews).")
    print_host_memory()
    match_float32_matmuls(args.f32_matmul)
    peak = measure_peak(args.dtype)
    with tempfile.TemporaryDirectory() as workdir:
        run_jax, host, flops, init_from = setup_tl_jax(args.batch, args.seq, workdir, args.dtype)
        run_hf = setup_hf(init_from, host, args.dtype)
        jax_s, hf_s = best_alternating(run_jax, run_hf, args.repeats, args.steps)
    tokens = args.batch * args.seq
    print(f"MiniLM-L6 classify fine-tuning, {args.dtype}, batch {args.batch} x seq {args.seq}: "
          f"tl_jax {tokens / jax_s:,.0f} tok/s (MFU {flops / jax_s / peak:.1%}) | HF PyTorch "
          f"{tokens / hf_s:,.0f} tok/s (MFU {flops / hf_s / peak:.1%}) | ratio "
          f"{hf_s / jax_s:.2f}x", flush=True)


if __name__ == "__main__":
    main()
