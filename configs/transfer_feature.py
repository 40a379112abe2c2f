"""Feature-based transfer: a frozen all-MiniLM-L6-v2 and a probe head, on the food reviews.

Run:
  tl_jax train --config=configs/transfer_feature.py:minilm --workdir=/tmp/transfer_feature \
      --config.probe.feature=scalar_mix

The encoder is frozen (no gradient, no optimizer state); features come from `probe.feature`:
embeddings | last | second_to_last | sum_last_four | concat_last_four | scalar_mix |
weighted_sum_last_four | weighted_sum_all_layers (tl_jax/models/probes.py maps them onto the BERT
paper's Table 7), into a `probe.head` of linear (default) or bilstm. Encoder features are computed once and cached
(`probe.cache_features`), so each epoch costs only the head. Ends with a summary like:
  done: 375 steps | held-out accuracy 0.7xxx | held-out f1_macro 0.7xxx | ...

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
    c.transfer.rules = ((r"bert/.*", "frozen"), (".*", "train"))
    c.probe.feature = "last"
    c.probe.cache_features = True
    c.optimizer.learning_rate = 1e-3   # a fresh head alone takes a larger rate
    c.optimizer.weight_decay = 0.0
    c.data.num_epochs = 3.0
    return c
