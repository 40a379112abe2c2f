"""Fill-in-the-blank with a pretrained BERT from a tl_jax workdir: a quick look at what it learned.

    model = FillMask.from_workdir("workdirs/quickstart/pretrain")
    model.predict("The capital of France is [MASK].", top_k=5)
"""
from __future__ import annotations

import json
import os

import jax
import numpy as np
import ml_collections

from tl_jax import checkpoint
from tl_jax.data.tokenizer import Tokenizer
from tl_jax.models import bert
from tl_jax.tasks.bert_pretrain import bert_config_from


def _unflatten(flat: dict[str, np.ndarray]) -> dict:
    tree: dict = {}
    for name, value in flat.items():
        node = tree
        *parents, leaf = name.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


class FillMask:
    def __init__(self, model_config: bert.BertConfig, params, tokenizer: Tokenizer):
        self.model = bert.BertForPreTraining(model_config)
        self.params = params
        self.tokenizer = tokenizer
        self.model_config = model_config
        self._apply = jax.jit(lambda p, ids, seg, mask: self.model.apply(
            {"params": p}, ids, seg, mask, deterministic=True)[0]["mlm_logits"])

    @classmethod
    def from_workdir(cls, workdir: str) -> "FillMask":
        with open(os.path.join(workdir, "config.json")) as f:
            config = ml_collections.ConfigDict(json.load(f))
        tokenizer = Tokenizer.load(os.path.join(workdir, "tokenizer"))
        flat, _ = checkpoint.load_params_from_workdir(workdir)
        return cls(bert_config_from(config.model, tokenizer.vocab_size), _unflatten(flat),
                   tokenizer)

    def predict(self, text: str, top_k: int = 5) -> list[list[str]]:
        """The top-k tokens for each [MASK] in `text` (which may contain several)."""
        tok = self.tokenizer
        pieces = text.split("[MASK]")
        ids = [tok.cls_id]
        for i, piece in enumerate(pieces):
            ids += tok.encode(piece)
            if i < len(pieces) - 1:
                ids.append(tok.mask_id)
        ids.append(tok.sep_id)
        if len(ids) > self.model_config.max_position_embeddings:
            raise ValueError(f"{len(ids)} tokens exceed the model's "
                             f"{self.model_config.max_position_embeddings} positions.")
        arr = np.asarray([ids], np.int32)
        logits = np.asarray(self._apply(self.params, arr, np.zeros_like(arr), np.ones_like(arr)))
        out = []
        for pos in np.flatnonzero(arr[0] == tok.mask_id):
            scores = logits[0, pos].copy()
            scores[list(tok.special_ids)] = -np.inf
            best = np.argsort(-scores)[:top_k]
            out.append([tok.decode([int(i)]) for i in best])
        return out
