"""Bottleneck adapters (Houlsby et al. 2019): the encoder frozen, small adapters trained.

Run:
  tl_jax train --config=configs/transfer_adapters.py:minilm --workdir=/tmp/transfer_adapters

An adapter (down-projection, nonlinearity, up-projection, residual) follows the attention and the
feed-forward block of every layer; adapters, LayerNorms and the head train, everything else is
frozen (no gradient state). Ends with a summary like:
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
    c.transfer.adapter_size = 8 if arg == "tiny" else 64
    c.transfer.rules = ((r".*_adapter/.*", "train"), (r".*norm/.*", "train,no_wd"),
                        (r"bert/.*", "frozen"), (".*", "train"))
    c.optimizer.learning_rate = 1e-3
    return c
