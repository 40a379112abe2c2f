"""Fine-tuning with the top k layers and the pooler re-initialised (Zhang et al. 2021).

Run:
  tl_jax train --config=configs/transfer_reinit.py:minilm --workdir=/tmp/transfer_reinit

The top `transfer.reinit_top_k` encoder layers get their fresh random initialisation back after
the pretrained weights load; then everything fine-tunes. Ends with a summary like:
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
    c.transfer.reinit_top_k = 1 if arg == "tiny" else 2
    return c
