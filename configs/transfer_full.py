"""Full fine-tuning of all-MiniLM-L6-v2 on the food reviews, through the transfer machinery.

Run:
  tl_jax train --config=configs/transfer_full.py:minilm --workdir=/tmp/transfer_full

Every parameter trains (one `('.*', 'train')` rule): the reference row of the transfer table.
The log starts with the rule/group/stage table and ends with a summary like:
  done: 250 steps | held-out accuracy 0.8xxx | held-out f1_macro 0.8xxx | held-out mcc 0.6xxx | ...

Arguments: `minilm` (default, needs $TL_JAX_DATA_DIR) or `tiny` (a 2-layer model from scratch on
a 192-example slice: a smoke test of a few steps). Sizes, data and epochs: see
configs/finetune_classify.py, whose config this extends with the `transfer` and `probe` sections.
"""
import importlib.util
import os

from tl_jax.optim import transfer
from tl_jax.tasks import probe


def base_config(arg):
    """configs/finetune_classify.py's config for `arg`, as the `probe` task with default sections."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "finetune_classify.py")
    spec = importlib.util.spec_from_file_location("_transfer_base_finetune_classify", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config(arg or "minilm")
    c.task = "probe"
    c.transfer = transfer.default_config()
    c.probe = probe.default_config()
    return c


def get_config(arg=None):
    c = base_config(arg)
    c.transfer.rules = ((".*", "train"),)
    return c
