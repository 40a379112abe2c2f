"""LoRA (Hu et al. 2021) on the query and value projections; everything else frozen but the head.

Run:
  tl_jax train --config=configs/transfer_lora.py:minilm --workdir=/tmp/transfer_lora

`lora_b` starts at zero, so training starts from the pretrained function exactly. Ends with a
summary like:
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
    c.transfer.lora_rank = 8
    c.transfer.lora_alpha = 16.0
    c.transfer.rules = ((r".*/lora_[ab]", "train,no_wd"), (r"bert/.*", "frozen"),
                        (".*", "train"))
    c.optimizer.learning_rate = 1e-3
    return c
