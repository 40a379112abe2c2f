"""GPT throughput: training tokens/s vs Hugging Face GPT2LMHeadModel + AdamW (PyTorch), and
cached generation vs recomputing the whole sequence for every new token.

Run (on the real device count; do not set the 8-fake-device flag used by the tests):
  python benchmarks/gpt_train_and_generate.py [--sizes=tiny,mini] [--batch=16] [--seq=128]

Prints, per size, tokens/s of both trainers and their ratio (target >= 1.5x at tiny/mini on a
CPU), then generation tokens/s with and without the cache and their ratio (target >= 5x for
256 new tokens; without the cache each new token reruns the sequence so far, padded up to a
multiple of 16 positions), and HF's cached `generate` for reference. Both sides use the same
shapes, batch, dropout 0, fp32 (`--dtype=bfloat16`: mixed precision for training on both
sides), AdamW without clipping and all of the machine's cores (`torch.set_num_threads`); each is
warmed up (compiled) before timing. tl_jax runs with its host memory policy (freed memory kept
for reuse, tl_jax/host_memory.py); HF's training runs in a separate process with glibc's own
(`--peer_memory=same`: in this process, under tl_jax's policy too). On a GPU (JAX's default backend `gpu` and
`torch.cuda` available) PyTorch runs on the same GPU, float32 matmuls in TF32 on both sides
(XLA's default; `--f32_matmul=highest`: full float32 on both); e.g. `--sizes=small --seq=512
--dtype=bfloat16`.
"""
import argparse
import dataclasses
import functools
import multiprocessing
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
from flax import linen as nn
from transformers import GPT2Config, GPT2LMHeadModel

from bert_pretrain_vs_hf import description, positive_int, refuse_fake_devices
from tl_jax import host_memory
from tl_jax.generate import Generator
from tl_jax.models.gpt import GPT, SIZES, gpt_config
from tl_jax.tasks.clm import lm_loss

VOCAB = 8192  # the BPE size the GPT configs train
# Where PyTorch runs: the GPU when JAX runs on one too (set in main), so the two sides compare on
# the same chip.
TORCH_DEVICE = "cpu"
# The uncached baseline runs the sequence so far padded up to a multiple of this.
RECOMPUTE_BUCKET = 16


def torch_sync():
    if TORCH_DEVICE == "cuda":
        torch.cuda.synchronize()


def train_flops_per_token(cfg, seq: int) -> float:
    """Model FLOPs of one training token: 6 x the matmul weights (blocks and the tied output
    head) plus attention scores and mixing (12 x layers x seq x width, not halved for the causal
    mask)."""
    d = cfg.embed_dim
    weights = cfg.num_layers * (4 * d * d + 2 * d * cfg.mlp_dim) + cfg.vocab_size * d
    return 6 * weights + 12 * cfg.num_layers * seq * d


def flop_rate(flops_per_second: float) -> str:
    return (f"{flops_per_second / 1e12:,.1f} TFLOP/s" if flops_per_second >= 1e12
            else f"{flops_per_second / 1e9:,.0f} GFLOP/s")


def timed(fn, steps: int) -> float:
    """Seconds per call of `fn` (which must block until its work is done), after one warm-up."""
    fn()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def jax_train(cfg, batch, seq, steps):
    model = GPT(cfg)
    tokens = jax.random.randint(jax.random.PRNGKey(0), (batch, seq + 1), 0, cfg.vocab_size)
    params = nn.unbox(model.init(jax.random.PRNGKey(1), tokens[:, :-1])["params"])
    tx = optax.adamw(1e-4, weight_decay=0.01)
    state = {"params": params, "opt": tx.init(params)}

    @jax.jit
    def step(state, tokens):
        def loss_fn(p):  # the `clm` task's loss: chunked cross-entropy through the tied embedding
            hidden = model.apply({"params": p}, tokens[:, :-1], logits=False)[0]["hidden"]
            nll, _, count = lm_loss(p, hidden, tokens[:, 1:], jnp.ones(tokens[:, 1:].shape))
            return nll / count
        loss, grads = jax.value_and_grad(loss_fn)(state["params"])
        updates, opt = tx.update(grads, state["opt"], state["params"])
        return {"params": optax.apply_updates(state["params"], updates), "opt": opt}, loss

    def run():
        nonlocal state
        state, loss = step(state, tokens)
        loss.block_until_ready()

    return timed(run, steps)


def hf_config(cfg):
    return GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.max_len, n_embd=cfg.embed_dim,
                      n_layer=cfg.num_layers, n_head=cfg.num_heads, n_inner=cfg.mlp_dim,
                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0,
                      eos_token_id=None, pad_token_id=0)


def torch_train(cfg, batch, seq, steps):
    torch.manual_seed(0)
    model = GPT2LMHeadModel(hf_config(cfg)).to(TORCH_DEVICE).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    tokens = torch.randint(0, cfg.vocab_size, (batch, seq)).to(TORCH_DEVICE)
    low = cfg.dtype == "bfloat16"

    def run():
        # bfloat16: PyTorch's own mixed precision (autocast; params and optimizer stay f32).
        with torch.autocast(TORCH_DEVICE, dtype=torch.bfloat16, enabled=low):
            loss = model(tokens, labels=tokens).loss  # HF shifts the labels internally
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch_sync()

    return timed(run, steps)


def _peer_train(setup, cfg, batch, seq, steps):
    """`torch_train` in a fresh interpreter (see `peer_train_seconds`)."""
    global TORCH_DEVICE
    TORCH_DEVICE = setup["device"]
    torch.set_num_threads(setup["threads"])
    if setup["matmul_precision"]:
        torch.set_float32_matmul_precision(setup["matmul_precision"])
    return torch_train(cfg, batch, seq, steps)


def peer_train_seconds(args, cfg, batch, seq, steps):
    """Seconds per HF training step, under the host memory policy `args.peer_memory` names.

    Importing tl_jax keeps freed host memory in the process for reuse (tl_jax/host_memory.py),
    which removes the page faults of every step's large temporaries on both sides of this
    process. "glibc" (the default) times PyTorch as it runs on its own, with glibc's malloc
    policy: in a fresh interpreter started with TL_JAX_KEEP_FREED_MEMORY=0. "same" times it
    here, under tl_jax's policy.
    """
    if args.peer_memory == "same":
        return torch_train(cfg, batch, seq, steps)
    setup = {"device": TORCH_DEVICE, "threads": torch.get_num_threads(),
             "matmul_precision": torch.get_float32_matmul_precision()
             if TORCH_DEVICE == "cuda" else None}
    previous = os.environ.get("TL_JAX_KEEP_FREED_MEMORY")
    os.environ["TL_JAX_KEEP_FREED_MEMORY"] = "0"  # inherited by the spawned interpreter
    try:
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            return pool.apply(_peer_train, (setup, cfg, batch, seq, steps))
    finally:
        if previous is None:
            del os.environ["TL_JAX_KEEP_FREED_MEMORY"]
        else:
            os.environ["TL_JAX_KEEP_FREED_MEMORY"] = previous


def generation(cfg, batch, prompt_len, new_tokens):
    """Seconds for `new_tokens` tokens: with the KV cache, and recomputing all positions."""
    model = GPT(cfg)
    params = nn.unbox(model.init(jax.random.PRNGKey(1), jnp.zeros((1, 8), jnp.int32))["params"])
    prompts = np.random.default_rng(0).integers(1, cfg.vocab_size, (batch, prompt_len)).tolist()
    gen = Generator(model, params)
    # A cached run takes a fraction of a second, so one timing is at the mercy of a scheduler
    # hiccup: keep the best of five (after the warm-up that compiles).
    gen.generate(prompts, new_tokens)
    cached = min(timed(lambda: gen.generate(prompts, new_tokens), 1) for _ in range(5))

    total = prompt_len + new_tokens

    @functools.partial(jax.jit, static_argnums=2)
    def next_token(params, tokens, length, t):
        # The whole sequence so far, rounded up to a multiple of RECOMPUTE_BUCKET (a compile
        # per bucket, not per length; the causal mask keeps the zeros past t out of position
        # t-1). Running all `total` positions for every token would inflate the speed-up.
        logits = model.apply({"params": params}, tokens[:, :length])[0]["logits"]  # (B, len, V)
        return tokens.at[:, t].set(jnp.argmax(logits[:, t - 1], -1))

    def recompute():
        tokens = jnp.zeros((batch, total), jnp.int32).at[:, :prompt_len].set(jnp.asarray(prompts))
        for t in range(prompt_len, total):
            length = min(total, -(-t // RECOMPUTE_BUCKET) * RECOMPUTE_BUCKET)
            tokens = next_token(params, tokens, length, t)
        tokens.block_until_ready()
        return tokens

    uncached = timed(recompute, 1)
    # Both decoders are greedy over the same model: the outputs must agree.
    assert recompute()[:, prompt_len:].tolist() == gen.generate(prompts, new_tokens)
    return cached, uncached


def hf_generation(cfg, batch, prompt_len, new_tokens):
    torch.manual_seed(0)
    model = GPT2LMHeadModel(hf_config(cfg)).to(TORCH_DEVICE).eval()
    prompts = torch.randint(1, cfg.vocab_size, (batch, prompt_len)).to(TORCH_DEVICE)

    def run():
        with torch.no_grad():
            model.generate(prompts, attention_mask=torch.ones_like(prompts), do_sample=False,
                           max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0)
        torch_sync()

    return timed(run, 1)


def size_list(text: str) -> list[str]:
    """argparse type of --sizes: GPT sizes, comma-separated, each checked before any runs (an
    unknown one failed only after the sizes before it had been timed)."""
    sizes = [size.strip() for size in text.split(",") if size.strip()]
    unknown = [size for size in sizes if size not in SIZES]
    if unknown or not sizes:
        raise argparse.ArgumentTypeError(
            f"unknown GPT size(s) {unknown or text!r}; choose from {', '.join(SIZES)}")
    return sizes


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description(__doc__))
    parser.add_argument("--sizes", type=size_list, default="tiny,mini",
                        help=f"comma-separated GPT sizes ({', '.join(SIZES)}; default "
                             "%(default)s)")
    parser.add_argument("--batch", type=positive_int, default=16,
                        help="training sequences per step (default %(default)s)")
    parser.add_argument("--seq", type=positive_int, default=128,
                        help="training tokens per sequence (default %(default)s)")
    parser.add_argument("--steps", type=positive_int, default=10,
                        help="training steps per timed run (default %(default)s)")
    parser.add_argument("--repeats", type=positive_int, default=3,
                        help="training is timed this many times, alternating the two sides; "
                             "the best of each is kept (load on a shared machine hits both)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                        help="training compute dtype of both sides; bfloat16 = mixed precision "
                             "(tl_jax's model dtype, PyTorch's autocast), params and optimizer "
                             "in f32. Generation always runs in float32")
    parser.add_argument("--f32_matmul", default="tf32", choices=["tf32", "highest"],
                        help="on a GPU, the float32 matmul arithmetic of both sides: TF32 "
                             "(XLA's default; PyTorch is set to match) or full float32")
    parser.add_argument("--peer_memory", default="glibc", choices=["glibc", "same"],
                        help="host memory policy of HF's training: glibc's own, in a separate "
                             "process (PyTorch as it runs by itself), or the same as tl_jax's "
                             "(kept for reuse, tl_jax/host_memory.py), in this process")
    parser.add_argument("--gen_batch", type=positive_int, default=1,
                        help="prompts generated at once (default %(default)s)")
    parser.add_argument("--prompt_len", type=positive_int, default=16,
                        help="tokens per random prompt (default %(default)s)")
    parser.add_argument("--new_tokens", type=positive_int, default=256,
                        help="tokens generated per prompt (default %(default)s)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    refuse_fake_devices()  # as the BERT and fine-tuning scripts: they would time a split CPU
    global TORCH_DEVICE
    if jax.default_backend() == "gpu" and torch.cuda.is_available():
        TORCH_DEVICE = "cuda"
    # XLA:CPU uses every logical core; PyTorch defaults to the physical ones.
    torch.set_num_threads(os.cpu_count())
    if TORCH_DEVICE == "cuda":
        # XLA runs float32 dots in TF32 on a GPU by default, PyTorch in full float32: the same
        # arithmetic on both sides, TF32 (PyTorch set to match) or, with --f32_matmul=highest,
        # full float32.
        if args.f32_matmul == "highest":
            jax.config.update("jax_default_matmul_precision", "highest")
            torch.set_float32_matmul_precision("highest")
        else:
            torch.set_float32_matmul_precision("high")
    torch_where = (torch.cuda.get_device_name() if TORCH_DEVICE == "cuda"
                   else f"cpu, {torch.get_num_threads()} threads")
    print(f"devices: {jax.devices()}  torch: {torch_where}")
    print(f"host memory: tl_jax keeps freed memory for reuse: {host_memory.keep_freed_memory()}"
          f"; HF training: " + ("glibc's policy, in its own process" if args.peer_memory == "glibc"
                                else "the same policy, in this process"))
    for size in args.sizes:
        max_len = max(args.seq, args.prompt_len + args.new_tokens)
        cfg = gpt_config(size, VOCAB, max_len=max_len, dropout_rate=0.0,
                         attention_dropout_rate=0.0)
        train_cfg = dataclasses.replace(cfg, dtype=args.dtype)
        tokens = args.batch * args.seq
        ours = theirs = 0.0
        for _ in range(args.repeats):
            ours = max(ours, tokens / jax_train(train_cfg, args.batch, args.seq, args.steps))
            theirs = max(theirs, tokens / peer_train_seconds(
                args, train_cfg, args.batch, args.seq, args.steps))
        per_token = train_flops_per_token(train_cfg, args.seq)
        print(f"[{size}] train {args.dtype} batch {args.batch} x seq {args.seq}: "
              f"tl_jax {ours:,.0f} tok/s ({flop_rate(ours * per_token)}) | "
              f"HF PyTorch {theirs:,.0f} tok/s ({flop_rate(theirs * per_token)}) | "
              f"ratio {ours / theirs:.2f}x (target >= 1.5x on a CPU)", flush=True)
        new = args.gen_batch * args.new_tokens
        cached, uncached = generation(cfg, args.gen_batch, args.prompt_len, args.new_tokens)
        hf = hf_generation(cfg, args.gen_batch, args.prompt_len, args.new_tokens)
        print(f"[{size}] generate {args.new_tokens} new tokens (batch {args.gen_batch}, prompt "
              f"{args.prompt_len}): cached {new / cached:,.0f} tok/s | recompute "
              f"{new / uncached:,.0f} tok/s | ratio {uncached / cached:.1f}x (target >= 5x) | "
              f"HF generate {new / hf:,.0f} tok/s", flush=True)


if __name__ == "__main__":
    main()
