"""ULMFiT-style fine-tuning: gradual unfreezing + discriminative learning rates + STLR.

Run:
  tl_jax train --config=configs/transfer_ulmfit.py:minilm --workdir=/tmp/transfer_ulmfit

Howard & Ruder (2018): the head trains alone first, then one more layer group per stage going
down (head, layer_5, ..., layer_0, embeddings); each layer below the top gets the rate of the one
above divided by 2.6; the rate follows a slanted triangular schedule (cut_frac 0.1, ratio 32)
over the whole run. Stages last `transfer.stage_steps` (or `stage_epochs`); the trainer compiles
once for the run (the stage is read from the step). Ends with a summary like:
  done: 250 steps | held-out accuracy 0.8xxx | ...

Arguments: `minilm` (default) or `tiny` (smoke test).
"""
import importlib.util
import os


def get_config(arg=None):
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "transfer_full.py")
    spec = importlib.util.spec_from_file_location("_transfer_full", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.base_config(arg)
    c.transfer.rules = ((".*", "train"),)
    c.transfer.strategy = "gradual_unfreezing"
    c.transfer.discriminative_decay = 2.6
    c.transfer.schedule = "stlr"
    c.optimizer.warmup_steps = 0  # STLR warms up itself, over transfer.stlr_cut_frac of the steps
    # 8 stages fit in ~2 epochs of 125 steps; tiny: 4 stages of 3 in its 12 steps
    c.transfer.stage_steps = 3 if arg == "tiny" else 20
    c.optimizer.learning_rate = 2e-4  # the head's (top) rate; lower layers get / 2.6 per layer
    return c
