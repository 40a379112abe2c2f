"""Chain-thaw (Felbo et al. 2017): the head group alone, then each layer alone, then all.

Run:
  tl_jax train --config=configs/transfer_chain_thaw.py:minilm --workdir=/tmp/transfer_chain_thaw

Stages: head (the new classifier with MiniLM's pretrained pooler, unused under mean pooling);
embeddings; layer_0; ...; layer_5; everything until the end; each lasts `transfer.stage_steps`.
The trainer compiles once (the stage is read from the step); each layer group keeps its own
Adam state, so a group trained alone and later thawed again continues where it stopped.
(DeepMoji's code instead trains each stage until the validation loss stops improving, with a
fresh Adam per stage, at 1e-3 for the head's stage and 1e-4 afterwards; here all stages share
one rate schedule and have a fixed length.) Ends with a summary like:
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
    c.transfer.strategy = "chain_thaw"
    c.transfer.stage_steps = 2 if arg == "tiny" else 20  # tiny: 5 stages of 2 in its 12 steps
    c.optimizer.learning_rate = 1e-4
    return c
