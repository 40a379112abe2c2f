"""Fill-in-the-blank with a masked LM from a tl_jax workdir: a quick look at what it learned.

    model = FillMask.from_workdir("workdirs/quickstart/pretrain")
    model.predict("The capital of France is [MASK].", top_k=5)

    tl_jax fill_mask --model=workdirs/quickstart/pretrain --text="The capital of France is [MASK]."

Which model predicts, by the workdir's task:

    bert_pretrain   the BERT and its MLM head
    distill         the student (`bert/`, `mlm_head/`); the teacher (`teacher/`) is not read
    electra         the generator, the only half that predicts tokens (the discriminator only
                    says whether a token was replaced); it is the small model (1/4 width)

Any other workdir (a fine-tuned task model, a GPT language model, a biLM, static vectors) has
no masked-LM head and is refused with a one-line `FillMaskError` saying what the workdir is.

`FillMask.load(path)` also takes a Hugging Face BERT directory whose checkpoint has the MLM head
(`BertForMaskedLM`, `BertForPreTraining`; an encoder-only `BertModel` is refused), a Hugging
Face ELECTRA generator directory (`ElectraForMaskedLM`, or a discriminator + generator pair
directory, whose `generator/` predicts; a discriminator alone is refused: it has no masked-LM
head) and a tl_jax weights directory of a BERT with its heads or of an ELECTRA pair (`tl_jax
convert` of such a directory or workdir; the pair's generator predicts).
"""
from __future__ import annotations

import dataclasses
import os
import re

import jax
import numpy as np
import ml_collections

from tl_jax import checkpoint, warm_start
from tl_jax.data.tokenizer import Tokenizer
from tl_jax.models import bert, electra


class FillMaskError(ValueError):
    """A directory fill_mask cannot predict masked tokens with."""


# Tasks whose workdirs hold a masked-LM head, and the params each one needs.
MASKED_LM_PARAMS = {
    "bert_pretrain": ("bert", "mlm_head", "nsp_head"),  # BertForPreTraining runs both heads
    "distill": ("bert", "mlm_head", "nsp_head"),
    "electra": ("bert", "generator"),
}

# What the other tasks' workdirs are, for the error.
_FINE_TUNED = "a fine-tuned {task} model: fine-tuning keeps the encoder and drops the MLM head"
NOT_MASKED_LMS = {
    "classify": _FINE_TUNED,
    "tag": _FINE_TUNED,
    "squad": _FINE_TUNED,
    "probe": _FINE_TUNED,
    "lm_classify": "a fine-tuned GPT classifier (task lm_classify): a GPT has no masked-LM head",
    "clm": "a GPT causal language model (task clm): it predicts the next token, not a masked "
           "one; use `tl_jax generate --model={workdir}`",
    "bilm": "an ELMo-style biLM (task bilm): it predicts the next and previous words, not "
            "masked ones",
}


def _unflatten(flat: dict[str, np.ndarray]) -> dict:
    tree: dict = {}
    for name, value in flat.items():
        node = tree
        *parents, leaf = name.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def workdir_task(workdir: str) -> str:
    """The task of a workdir fill_mask can read; a `FillMaskError` for anything else."""
    if os.path.isfile(os.path.join(workdir, "static_config.json")):
        raise FillMaskError(f"fill_mask: {workdir} holds static word vectors (`tl_jax static`), "
                            "which have no masked-LM head")
    if not os.path.isdir(workdir):
        # (A file was said not to exist.)
        raise FillMaskError(f"fill_mask: {workdir} "
                            + ("is a file, not a workdir or model directory"
                               if os.path.exists(workdir) else "does not exist"))
    config_path = os.path.join(workdir, "config.json")
    if not os.path.isdir(os.path.join(workdir, "checkpoints")) or not os.path.isfile(config_path):
        # The folder above a run's workdir (`tl_jax quickstart --workdir=W` pretrains in
        # W/pretrain) is named with the workdirs in it.
        inside = sorted(name for name in os.listdir(workdir)
                        if os.path.isdir(os.path.join(workdir, name, "checkpoints")))
        raise FillMaskError(f"fill_mask: {workdir} is not a `tl_jax train` workdir (it needs "
                            "checkpoints/ and config.json)"
                            + (f"; the workdirs in it: {', '.join(inside)}" if inside else ""))
    config = _workdir_config(workdir)
    task = config.get("task", "")
    if task in MASKED_LM_PARAMS:
        return task
    if task in NOT_MASKED_LMS:
        what = NOT_MASKED_LMS[task].format(task=task, workdir=workdir)
        if task in ("classify", "tag", "squad", "probe") and config.get("init_from"):
            what += f" (its encoder came from init_from={config['init_from']})"
        raise FillMaskError(f"fill_mask: {workdir} is {what}")
    raise FillMaskError(f"fill_mask: {workdir} is a {task or 'task-less'} workdir "
                        f"({config_path}); fill_mask reads {', '.join(MASKED_LM_PARAMS)} workdirs")


def _bert_config(resolved: dict | None, params: dict, model_cfg: dict) -> bert.BertConfig:
    """The BertConfig the run built (its checkpoint's `resolved_model`), else from the shapes."""
    fields = {f.name for f in dataclasses.fields(bert.BertConfig)}
    if resolved and set(resolved) <= fields:
        return bert.BertConfig(**resolved)
    from tl_jax.interop import bert as hf_bert
    extra = {k: model_cfg[k] for k in ("hidden_act", "layer_norm_eps") if k in model_cfg}
    return hf_bert.config_from_params(params, **extra)


def _electra_config(resolved: dict | None, model_cfg: dict, vocab_size: int):
    if resolved and isinstance(resolved.get("discriminator"), dict):
        return electra.ElectraConfig(**dict(
            resolved, discriminator=bert.BertConfig(**resolved["discriminator"])))
    from tl_jax.tasks.electra import electra_config_from
    return electra_config_from(ml_collections.ConfigDict(model_cfg), vocab_size)


def _workdir_config(workdir: str) -> dict:
    """The config.json `tl_jax train` wrote in `workdir`, as a dict."""
    try:
        return checkpoint.load_run_config(workdir)
    except ValueError as e:
        raise FillMaskError(f"fill_mask: {e}") from e


def _hf_config(path: str) -> dict:
    """The config.json of a directory that is not a workdir (a Hugging Face model's)."""
    from tl_jax import interop

    try:
        hf_config, config_file = interop.read_config_json(path)
    except ValueError as e:
        raise FillMaskError(f"fill_mask: {e}; read as a Hugging Face model's config, since "
                            f"{path} has no checkpoints/ of a `tl_jax train` workdir") from e
    if not isinstance(hf_config, dict):
        raise FillMaskError(f"fill_mask: {config_file} holds a JSON "
                            f"{type(hf_config).__name__}, not a model config (an object)")
    return hf_config


class FillMask:
    """Top-k tokens for each [MASK] of a text.

    `model_config` is a `BertConfig` (BERT, or a distillation student: `params` holds `bert/`
    and `mlm_head/`) or an `ElectraConfig` (the generator predicts; `params` holds `bert/`, whose
    embeddings it shares, and `generator/`).
    """

    def __init__(self, model_config, params, tokenizer: Tokenizer, description: str = ""):
        self.params = params
        self.tokenizer = tokenizer
        self.model_config = model_config
        if isinstance(model_config, electra.ElectraConfig):
            self.model = electra.ElectraForPreTraining(model_config)
            self.max_positions = model_config.discriminator.max_position_embeddings
            apply = lambda p, ids, seg, mask, pos: self.model.apply(  # noqa: E731
                {"params": p}, ids, seg, mask, pos, method=electra.ElectraForPreTraining.generate)
            self.description = description or "the ELECTRA generator"
        else:
            self.model = bert.BertForPreTraining(model_config)
            self.max_positions = model_config.max_position_embeddings
            apply = lambda p, ids, seg, mask, pos: self.model.apply(  # noqa: E731
                {"params": p}, ids, seg, mask, masked_positions=pos, deterministic=True)
            self.description = description or "BERT"
        # (1, L) ids and the (1, P) mask positions -> (1, P, V) logits
        self._apply = jax.jit(lambda *args: apply(*args)[0]["mlm_logits"])

    @classmethod
    def from_workdir(cls, workdir: str) -> "FillMask":
        """The masked LM of a `bert_pretrain`, `distill` (the student) or `electra` (the
        generator) workdir; `FillMaskError` for any other directory."""
        task = workdir_task(workdir)
        model_cfg = _workdir_config(workdir).get("model") or {}
        tokenizer = Tokenizer.load(os.path.join(workdir, "tokenizer"))
        wanted = MASKED_LM_PARAMS[task]
        flat, step = checkpoint.load_params_from_workdir(workdir, only=wanted)
        missing = [name for name in wanted if not any(p.startswith(name + "/") for p in flat)]
        if missing:
            raise FillMaskError(f"fill_mask: the step-{step} checkpoint of {workdir} (task "
                                f"{task}) has no {' or '.join(p + '/' for p in missing)} params")
        params = _unflatten(flat)
        resolved = checkpoint.config_from_workdir(workdir, step).get("resolved_model")
        if task == "electra":
            config = _electra_config(resolved, model_cfg, tokenizer.vocab_size)
            description = (f"the ELECTRA generator of {workdir} (step {step}; "
                           f"{config.generator_num_layers} layers, "
                           f"{config.generator_hidden_size} wide): the discriminator only tells "
                           "original from replaced tokens")
        else:
            config = _bert_config(resolved, params, model_cfg)
            what = ("the distilled student" if task == "distill" else "BERT")
            description = (f"{what} of {workdir} (step {step}; {config.num_layers} layers, "
                           f"{config.hidden_size} wide)")
            if task == "distill":
                description += "; the teacher is not used"
        return cls(config, params, tokenizer, description)

    @classmethod
    def load(cls, path: str) -> "FillMask":
        """A `tl_jax train` workdir (see `from_workdir`), a Hugging Face BERT directory with its
        MLM head, a Hugging Face ELECTRA generator (or pair) directory, or a tl_jax weights
        directory of a BERT with its heads."""
        from tl_jax.interop import convert

        if os.path.isdir(os.path.join(path, "checkpoints")) or not os.path.isdir(path):
            return cls.from_workdir(path)
        if convert.is_tl_dir(path):
            return cls._from_weights_dir(path)
        if os.path.isfile(os.path.join(path, "config.json")):
            hf_config = _hf_config(path)
            if "model_type" in hf_config:
                return cls._from_hf_dir(path, hf_config)
        return cls.from_workdir(path)  # says what is missing

    @classmethod
    def _from_hf_dir(cls, path: str, hf_config: dict) -> "FillMask":
        from tl_jax.interop import bert as hf_bert

        model_type = hf_config.get("model_type")
        if model_type == "electra":
            return cls._from_hf_electra(path, hf_config.get("architectures") or [])
        if model_type != "bert":
            raise FillMaskError(f"fill_mask: {path} is a Hugging Face {model_type or 'unknown'} "
                                "model; fill_mask reads BERT and ELECTRA directories (model_type "
                                "'bert' or 'electra')")
        config, params, report = hf_bert.load(path, with_heads=True, warn=False)
        if any(p.startswith("mlm_head/") for p in report.missing):
            raise FillMaskError(
                f"fill_mask: {path} holds an encoder without its MLM head (a BertModel "
                "checkpoint), so it cannot predict tokens; give it one with "
                f"`{warm_start.mlm_head_command(path, path, 'runs/mlm_head')}`")
        tokenizer = hf_bert.load_tl_tokenizer(path)
        return cls(config, params, tokenizer,
                   f"the Hugging Face BERT in {path} ({config.num_layers} layers, "
                   f"{config.hidden_size} wide)")

    @classmethod
    def _from_hf_electra(cls, path: str, architectures: list) -> "FillMask":
        """The generator of a HF ELECTRA directory: the directory itself when it is one
        (`ElectraForMaskedLM`), else the `generator/` of a pair directory; a discriminator or
        encoder alone has no masked-LM head and is refused."""
        from tl_jax.interop import bert as hf_bert
        from tl_jax.interop import electra as hf_electra

        gen_dir = os.path.join(path, hf_electra.GENERATOR_SUBDIR)
        if hf_electra.GENERATOR_ARCH in architectures:
            gen_dir, what = path, "the Hugging Face ELECTRA generator in"
        elif os.path.isfile(os.path.join(gen_dir, "config.json")):
            what = f"the Hugging Face ELECTRA generator of the pair {path}, in"
        elif architectures:
            arch = architectures[0]
            kind = {hf_electra.DISCRIMINATOR_ARCH: "an ELECTRA discriminator",
                    hf_electra.ENCODER_ARCH: "an ELECTRA encoder"}.get(arch, "an ELECTRA model")
            raise FillMaskError(
                f"fill_mask: {path} holds {kind} ({arch}) and no generator: it cannot fill masks, "
                "because only ELECTRA's generator (ElectraForMaskedLM) has a masked-LM head (the "
                "discriminator only tells original from replaced tokens); give the generator's "
                f"directory, or a pair directory with it in {hf_electra.GENERATOR_SUBDIR}/")
        else:  # no architectures in config.json: the weights say whether it is a generator
            gen_dir, what = path, "the Hugging Face ELECTRA generator in"
        try:
            config, params, _ = hf_electra.load_generator(gen_dir)
        except ValueError as e:
            raise FillMaskError(f"fill_mask: {gen_dir} cannot fill masks: {e}") from e
        tokenizer_dir = gen_dir if any(
            os.path.isfile(os.path.join(gen_dir, name)) for name in ("tokenizer.json",
                                                                     "vocab.txt")) else path
        g = config.generator
        return cls(config, params, hf_bert.load_tl_tokenizer(tokenizer_dir),
                   f"{what} {gen_dir} ({g.num_layers} layers, {g.hidden_size} wide)")

    @classmethod
    def _from_weights_dir(cls, path: str) -> "FillMask":
        from tl_jax.interop import convert

        config, params, family = convert.load_tl_params(path)
        if (family == "electra" and isinstance(config, electra.ElectraConfig)
                and "generator" in params):
            # An ELECTRA pair (`tl_jax convert` of a HF pair directory): its generator predicts,
            # as in the pair directory it came from.
            return cls(config, params, Tokenizer.load(path),
                       f"the ELECTRA generator in {path} ({config.generator_num_layers} layers, "
                       f"{config.generator_hidden_size} wide): the discriminator only tells "
                       "original from replaced tokens")
        heads = isinstance(params, dict) and {"mlm_head", "nsp_head"} <= set(params)
        if family != "bert" or not heads:
            what = {"bert": "a BERT encoder without its MLM head",
                    "electra": "an ELECTRA discriminator without its generator"}.get(
                        family, f"a {family} model")
            raise FillMaskError(f"fill_mask: {path} is a tl_jax weights directory of {what}; "
                                "fill_mask needs a BERT with its MLM head or an ELECTRA "
                                "generator (as `tl_jax convert` writes one of a pretraining "
                                "checkpoint or a Hugging Face pair directory)")
        return cls(config, params, Tokenizer.load(path),
                   f"the BERT in {path} ({config.num_layers} layers, {config.hidden_size} wide)")

    def predict(self, text: str, top_k: int = 5) -> list[list[str]]:
        """The top-k tokens for each [MASK] in `text` (one string, which may contain several
        [MASK]s; none gives []); fewer when the vocabulary has fewer than `top_k` tokens that
        are not special. The mask is written in capitals: "[mask]" is refused, not read as
        text."""
        if not isinstance(text, str):
            # A list failed as "'list' object has no attribute 'split'".
            raise FillMaskError(f"fill_mask: predict takes one text (a str), not a "
                                f"{type(text).__name__}; call it once per text")
        odd = [m for m in re.findall(r"\[mask\]", text, flags=re.IGNORECASE) if m != "[MASK]"]
        if odd:
            # "[mask]" is plain text ("[", "mask", "]"): no mask, so [] without a word.
            raise FillMaskError(f"fill_mask: {text[:60]!r} writes the mask as {odd[0]}; the "
                                "mask token is [MASK], in capitals")
        _check_top_k(top_k, "top_k")
        tok = self.tokenizer
        pieces = text.split("[MASK]")
        ids = [tok.cls_id]
        # Only [MASK] is special in the text: "[SEP]", "[CLS]" or "[PAD]" written in it are
        # plain text ("[", "sep", "]"), as the pretraining data tokenises them; the model never
        # saw a real [SEP] or [CLS] inside a segment.
        for i, piece_ids in enumerate(tok.encode_batch(pieces, special_tokens_as_text=True)):
            ids += piece_ids
            if i < len(pieces) - 1:
                ids.append(tok.mask_id)
        ids.append(tok.sep_id)
        if len(ids) > self.max_positions:
            shown = text if len(text) <= 60 else text[:60] + "..."
            raise FillMaskError(f"fill_mask: --text={shown!r} is {len(ids)} tokens with [CLS] and "
                                f"[SEP]; the model has {self.max_positions} positions")
        arr = np.asarray([ids], np.int32)
        positions = np.flatnonzero(arr[0] == tok.mask_id).astype(np.int32)
        if not len(positions):
            return []
        logits = np.asarray(self._apply(self.params, arr, np.zeros_like(arr), np.ones_like(arr),
                                        positions[None]))  # (1, P, V)
        # Only the tokenizer's tokens, less the special ones: rows past the tokenizer (a model
        # vocabulary padded beyond it) are no token at all.
        candidates = np.setdiff1d(np.arange(tok.vocab_size), tok.special_ids)
        out = []
        for scores in logits[0]:
            best = candidates[np.argsort(-scores[candidates], kind="stable")[:top_k]]
            out.append([tok.decode([int(i)]) for i in best])
        return out


def _check_top_k(top_k: int, name: str) -> None:
    if top_k < 1:
        raise FillMaskError(f"fill_mask: {name}={top_k}: expected >= 1 (the number of tokens "
                            "to list for each [MASK])")


def run(model_dir: str, texts, top_k: int = 5) -> None:
    """`tl_jax fill_mask`: says which model predicts, then one line per [MASK]."""
    if not texts:
        raise FillMaskError("fill_mask: give at least one --text with a [MASK] in it")
    _check_top_k(top_k, "--top_k")
    no_mask = [t for t in texts if "[MASK]" not in t]
    if no_mask:
        raise FillMaskError(f"fill_mask: --text={no_mask[0]!r} has no [MASK] to fill")
    model = FillMask.load(model_dir)
    print(f"[fill_mask] predicting with {model.description}", flush=True)
    for text in texts:
        for i, tokens in enumerate(model.predict(text, top_k=top_k), start=1):
            print(f"{text}\t[MASK] {i}: {' '.join(tokens)}", flush=True)
