"""DistilBERT-style distillation (Sanh et al., 2019): a shallow student learns a frozen teacher.

The parameter tree holds both models:

    bert/..., mlm_head/..., nsp_head/...      the student: exactly a BertForPreTraining tree, so
                                              every reader of a pretraining workdir (fine-tuning
                                              `init_from`, `tl_jax convert`, extract) finds it
    teacher/bert/..., teacher/mlm_head/...    the teacher, loaded from `config.init_from`

The teacher is frozen through the transfer machinery (`tl_jax/optim/transfer.py`): its paths
are a `frozen` rule, so the trainer computes no gradient for them and the optimizer keeps no
state for them; its outputs are also under `stop_gradient`. The student's pooler and NSP head
(copies of the teacher's; nothing here trains them, DistilBERT drops NSP) are frozen the same
way. The student has the teacher's width and vocabulary and `student.num_layers` layers
(default: half), initialised from the teacher's embeddings, heads and every other layer
(`student.layers`), or from scratch, or from another BERT of the same width and vocabulary.

Loss, on BERT pretraining's masked-LM batches (`tl_jax/data/pretraining.py`, the teacher's
tokenizer):

    alpha_ce  * T^2 * KL(softmax(teacher / T) || softmax(student / T))   at the masked positions
  + alpha_mlm * cross-entropy(student, masked tokens)
  + alpha_cos * (1 - cos(student last hidden state, teacher last hidden state))  over real tokens

The KL differs from the paper's soft cross-entropy by the teacher's entropy, a constant: the
same gradient, and a value that reaches 0 when the student matches.

Where the KL is taken: by default at the masked positions only, which is the reference
implementation's `--restrict_ce_to_mask` (HF examples/research_projects/distillation). That
script's default (its README's training command does not set the flag) takes it at every real
(non-pad) token, averaged over them; `distill.restrict_ce_to_mask=False` does that. It needs both models' MLM
logits at every position, (batch, length, vocabulary), not only at the ~15% masked ones.

DistilBERT's training command also froze the student's position embeddings
(`--freeze_pos_embs`); `distill.freeze_position_embeddings=True` does that (default False: they
train, as they did for the README's figures).

Not reproduced from DistilBERT's data side: its masking picks tokens with probability
proportional to count^-0.7 (`--mlm_smoothing 0.7`, rare tokens more often) where BERT's masking
here is uniform, and its sequences are single contiguous segments (no pairs, no segment ids);
here they are BERT pretraining's `[CLS] A [SEP] B [SEP]` pairs, whose NSP labels go unused.
"""
from __future__ import annotations

import dataclasses
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import optax

from tl_jax import checkpoint, paths, warm_start
from tl_jax.data import pretraining
from tl_jax.data.tokenizer import Tokenizer
from tl_jax.models import bert
from tl_jax.optim import transfer
from tl_jax.tasks import downstream
from tl_jax.tasks import bert_pretrain, held_out_metrics, masked_lm_normalizers, normalized

TEACHER = "teacher"
# The transfer rules the task always uses: the teacher, and the student's untrained pooler and
# NSP head (the teacher's copies), get no gradient and no optimizer state.
FREEZE_RULES = ((r"teacher/.*", "frozen"), (r"bert/pooler/.*|nsp_head/.*", "frozen"),
                (r".*", "train"))
# With `distill.freeze_position_embeddings`: the student's position table stays the teacher's,
# as the reference training command's `--freeze_pos_embs`.
POSITION_RULE = (r"bert/embeddings/position_embeddings/.*", "frozen")


def freeze_rules(cfg) -> tuple:
    """The transfer rules for `config.distill`: FREEZE_RULES, plus POSITION_RULE when asked."""
    if cfg.get("freeze_position_embeddings", False):
        return FREEZE_RULES[:-1] + (POSITION_RULE,) + FREEZE_RULES[-1:]
    return FREEZE_RULES


# ================================================================================================
# Student shape and initialisation
# ================================================================================================


def student_layer_indices(teacher_layers: int, num_layers: int, spec: str = "") -> list[int]:
    """Which teacher layer initialises each student layer.

    `spec` "" spreads `num_layers` evenly from the bottom (the paper's "one layer out of two":
    12 -> 0,2,...,10; 6 -> 0,2,4); otherwise a comma list of teacher layer indices, increasing.
    The released DistilBERT was initialised from 0,2,4,7,9,11 (the reference
    `extract_distilbert.py` keeps the top layer): `student.layers="0,2,4,7,9,11"` does that.
    `num_layers` 0 means half the teacher's layers (rounded up), or the list's length.
    """
    if spec:
        try:
            indices = [int(x) for x in str(spec).split(",") if x.strip()]
        except ValueError:
            raise ValueError(f"student.layers={spec!r} is not a comma list of layer indices")
        if num_layers and num_layers != len(indices):
            raise ValueError(f"student.layers={spec!r} names {len(indices)} layers but "
                             f"student.num_layers={num_layers}")
        bad = [i for i in indices if not 0 <= i < teacher_layers]
        if bad:
            raise ValueError(f"student.layers={spec!r}: {bad} outside the teacher's layers "
                             f"0..{teacher_layers - 1}")
        if not indices or sorted(set(indices)) != indices:
            raise ValueError(f"student.layers={spec!r} must be increasing teacher layer indices")
        return indices
    num_layers = num_layers or (teacher_layers + 1) // 2
    if num_layers > teacher_layers:
        raise ValueError(f"student.num_layers={num_layers} is deeper than the teacher "
                         f"({teacher_layers} layers): a student is a smaller model")
    if num_layers < 1:
        raise ValueError(f"student.num_layers={num_layers}; expected >= 1 (0 = half the teacher)")
    return [i * teacher_layers // num_layers for i in range(num_layers)]


def student_from_teacher(teacher_params: dict, indices: list[int]) -> dict:
    """A student BertForPreTraining tree: the teacher's embeddings, pooler and heads, and
    teacher layer `indices[i]` as student layer i (copies, not shared buffers)."""
    copy = lambda tree: jax.tree_util.tree_map(jnp.array, tree)  # noqa: E731
    t_bert = teacher_params["bert"]
    layers = {f"layer_{i}": copy(t_bert["encoder"][f"layer_{j}"]) for i, j in enumerate(indices)}
    student = {k: copy(v) for k, v in teacher_params.items() if k != "bert"}
    student["bert"] = {k: copy(v) for k, v in t_bert.items() if k != "encoder"}
    student["bert"]["encoder"] = layers
    return student


# ================================================================================================
# Loss pieces
# ================================================================================================


def soft_cross_entropy(student_logits, teacher_logits, temperature: float):
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)) per position. (..., V) -> (...)

    Hinton et al.'s T^2 keeps the soft targets' gradient scale independent of T.
    """
    t = jnp.asarray(temperature, jnp.float32)
    log_p_teacher = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / t, axis=-1)
    log_p_student = jax.nn.log_softmax(student_logits.astype(jnp.float32) / t, axis=-1)
    kl = jnp.sum(jnp.exp(log_p_teacher) * (log_p_teacher - log_p_student), axis=-1)
    return kl * t * t


def cosine_loss(student_hidden, teacher_hidden, input_mask):
    """`(sum over real tokens of 1 - cos(student, teacher), number of real tokens)`.

    student_hidden, teacher_hidden: (B, L, H); input_mask: (B, L), 1 for real tokens.
    """
    s = student_hidden.astype(jnp.float32)
    t = teacher_hidden.astype(jnp.float32)
    eps = 1e-8  # as torch.nn.CosineEmbeddingLoss: a zero vector gives cos 0, not NaN
    cos = jnp.sum(s * t, -1) / jnp.sqrt(
        jnp.maximum(jnp.sum(s * s, -1) * jnp.sum(t * t, -1), eps * eps))  # (B, L)
    weights = (input_mask > 0).astype(jnp.float32)
    return ((1.0 - cos) * weights).sum(), weights.sum()


def restricts_ce_to_mask(cfg) -> bool:
    """`distill.restrict_ce_to_mask` (True when a config predates the key)."""
    return bool(cfg.get("restrict_ce_to_mask", True))


# The counts its means divide by under gradient accumulation (`task.loss_normalizers`).
distillation_normalizers = masked_lm_normalizers


def distillation_loss(student_out, teacher_out, batch, cfg, normalizers=None):
    """The weighted DistilBERT loss and its metrics as `(sum, count)` pairs.

    student_out / teacher_out: BertForPreTraining outputs at `batch["masked_positions"]`, or
    at every position (`masked_positions=None`) when `cfg.restrict_ce_to_mask` is False.
    cfg: `config.distill` (temperature, alpha_ce, alpha_mlm, alpha_cos, restrict_ce_to_mask).
    normalizers: `distillation_normalizers` of the whole batch, under gradient accumulation:
    the means divide by its counts instead of this batch's.
    """
    weights = batch["masked_weights"].astype(jnp.float32)  # (B, P)
    n_pred = weights.sum()
    s_logits, t_logits = student_out["mlm_logits"], teacher_out["mlm_logits"]
    if restricts_ce_to_mask(cfg):  # (B, P, V): the KL at the masked positions
        ce_weights = weights
        ce = soft_cross_entropy(s_logits, t_logits, cfg.temperature)  # (B, P)
    else:  # (B, L, V): the KL at every real token, the rest at the masked positions
        ce_weights = (batch["input_mask"] > 0).astype(jnp.float32)  # (B, L)
        ce = soft_cross_entropy(s_logits, t_logits, cfg.temperature)  # (B, L)
        index = jnp.asarray(batch["masked_positions"])[..., None]  # (B, P, 1)
        s_logits = jnp.take_along_axis(s_logits, index, axis=1)  # (B, P, V)
        t_logits = jnp.take_along_axis(t_logits, index, axis=1)
    ce_sum = (ce * ce_weights).sum()
    n_ce = ce_weights.sum()
    labels = jnp.where(weights > 0, batch["masked_ids"], 0)
    mlm = optax.softmax_cross_entropy_with_integer_labels(s_logits, labels)  # (B, P)
    mlm_sum = (mlm * weights).sum()
    cos_sum, n_tokens = cosine_loss(student_out["sequence_output"],
                                    teacher_out["sequence_output"], batch["input_mask"])

    ce_count = "predictions" if restricts_ce_to_mask(cfg) else "tokens"  # what n_ce counts
    loss = (cfg.alpha_ce * normalized(ce_sum, n_ce, normalizers, ce_count)
            + cfg.alpha_mlm * normalized(mlm_sum, n_pred, normalizers, "predictions")
            + cfg.alpha_cos * normalized(cos_sum, n_tokens, normalizers, "tokens"))

    s_top, t_top = jnp.argmax(s_logits, -1), jnp.argmax(t_logits, -1)  # (B, P)
    metrics = dict(
        distill_loss=(ce_sum, n_ce),
        mlm_loss=(mlm_sum, n_pred),
        cos_loss=(cos_sum, n_tokens),
        mlm_accuracy=(((s_top == batch["masked_ids"]) * weights).sum(), n_pred),
        teacher_mlm_accuracy=(((t_top == batch["masked_ids"]) * weights).sum(), n_pred),
        agreement=(((s_top == t_top) * weights).sum(), n_pred),
    )
    return loss, metrics


# ================================================================================================
# The task
# ================================================================================================


def check_mlm_head(init_from: str, teacher_config: bert.BertConfig, tokenizer: str = "") -> None:
    """Refuses a teacher without an MLM head (e.g. a sentence-embedding model), before anything
    compiles: its soft targets would come from a randomly initialised head. `tokenizer` is the
    teacher's, for the command that gives it one (default: init_from's own)."""
    if warm_start.is_tl_workdir(init_from):
        names = checkpoint.param_shapes_from_workdir(init_from)[0]
    elif warm_start.is_tl_weights(init_from):
        # Its header's names: the whole folder was read (and copied) to list them.
        from tl_jax.interop import convert, safetensors_io
        names = safetensors_io.tensor_names(os.path.join(init_from, convert.TL_PARAMS))
    else:
        names = _hf_mlm_head_names(init_from, teacher_config)
    if any(name.startswith("mlm_head/") for name in names):
        return
    guess = "a sentence-embedding or task model?"
    if warm_start.is_tl_workdir(init_from):
        # A workdir says what it is: name its task rather than guess.
        try:
            task = checkpoint.load_run_config(init_from).get("task")
        except (OSError, ValueError):
            task = None
        if task == "electra":
            guess = ("an ELECTRA run: its discriminator has no MLM head, and its generator "
                     "is a smaller model")
        elif task:
            guess = f"a `{task}` run"
    raise warm_start.WarmStartError(
        f"init_from={init_from} has no MLM head ({guess}): the "
        "teacher's soft targets are its masked-LM distribution. Give it one first with a short "
        "continued pretraining run, then distil from that workdir:\n"
        "  " + warm_start.mlm_head_command(init_from,
                                           tokenizer or downstream.tokenizer_path(init_from)))


def _hf_mlm_head_names(directory: str, teacher_config: bert.BertConfig) -> list[str]:
    """The tl_jax paths (`mlm_head/...`) of the MLM head tensors a Hugging Face BERT directory
    holds, from its tensor names alone: a safetensors header or a sharded checkpoint's index,
    not the weights (a BERT-large's 1.3 GB were read, and converted, just to list them). A
    `pytorch_model.bin` is a pickle with no header: that one is still read whole. Shapes are
    checked when the teacher's weights are loaded."""
    from tl_jax.interop import bert as hf_bert, safetensors_io
    names, _ = safetensors_io.hf_tensor_names(directory)
    # The loader's own renaming (a `bert.` prefix, TF-era LayerNorm gamma/beta), so a name
    # counts here exactly when loading would map it into the head.
    names, _ = hf_bert.normalise_names(dict.fromkeys(names))
    head = {entry.hf_name: entry.tl_path for entry in hf_bert.tensor_map(teacher_config)
            if entry.tl_path.startswith("mlm_head/")}
    # A decoder bias stands for the output bias where `cls.predictions.bias` is missing.
    head.setdefault(hf_bert.TIED_DECODER_BIAS, "mlm_head/output_bias")
    return [head[name] for name in names if name in head]


def check_loss_settings(cfg) -> None:
    """`config.distill` must give a loss that trains the student towards the teacher: a positive
    temperature (0 divides by zero; a negative one ranks the teacher's tokens upside down) and
    finite, non-negative weights, not all 0 (a negative one pushes the student away)."""
    t = cfg.temperature
    if not (math.isfinite(t) and t > 0):
        raise ValueError(f"distill.temperature={t} must be a finite number > 0 (DistilBERT: 2).")
    weights = {name: cfg[name] for name in ("alpha_ce", "alpha_mlm", "alpha_cos")}
    for name, weight in weights.items():
        if not (math.isfinite(weight) and weight >= 0):
            raise ValueError(f"distill.{name}={weight} must be a finite number >= 0.")
    if not any(weights.values()):
        raise ValueError("distill.alpha_ce, alpha_mlm and alpha_cos: all three loss weights are "
                         "0: nothing would train the student.")


def _from_student_of(params: dict, source: str, model_config, role: str) -> dict:
    """`params` (a BertForPreTraining tree: bert/, mlm_head/, nsp_head/) warm-started from
    `source`, for this run's `role` ("teacher" from init_from, "student" from student.init).

    A distillation workdir as the source gives its student (the same paths) and leaves its own
    teacher behind, saying so in one line: as unused source tensors, every one of the teacher's
    names was listed (46 for a 2-layer BERT, ~200 for BERT-base)."""
    key = "init_from" if role == TEACHER else "student.init"
    if warm_start.is_tl_workdir(source):
        names = checkpoint.param_shapes_from_workdir(source)[0]
        left = sum(name.startswith(f"{TEACHER}/") for name in names)
        if left:
            warm_start.say(f"[distill] {key}={source} is a distillation run: its student is "
                           f"this run's {role}; its teacher ({left} tensors) is left behind.")
    # Every source name under `role/` but the source's teacher's (the first prefix that
    # matches renames), so that `only` keeps the rest as before and leaves that teacher out.
    prefix_map = {f"{TEACHER}/": "source_teacher/", "": f"{role}/"}
    return warm_start.warm_start({role: params}, source, model_config, prefix_map=prefix_map,
                                 only=f"{role}/")[role]


# Beside a run's checkpoints: the teacher's shape, so that the run resumes without init_from
# (the checkpoint holds the teacher's weights, the workdir's tokenizer/ its vocabulary). The
# student's shape is the checkpoint's resolved_model, as every task's.
TEACHER_MODEL_FILE = "teacher_model.json"


def kept_teacher(workdir: str | None) -> bert.BertConfig | None:
    """The teacher's `BertConfig` saved in `workdir`, for a run that resumes there; None for a
    new run (or a workdir saved without the file), which reads init_from.

    A resumed run's teacher is the checkpoint's, as every resumed run's weights are: init_from
    is not read again. It was needed for its shape and vocabulary, so a teacher moved or
    deleted since stopped the resume ("does not exist"), and one replaced by a model of another
    depth stopped it with an error about optimizer settings or transfer rules."""
    if not checkpoint.resumes_with_tokenizer(workdir):
        return None
    path = os.path.join(workdir, TEACHER_MODEL_FILE)
    if not os.path.isfile(path):
        return None
    return bert.BertConfig(**checkpoint.load_json(
        path, "the teacher's shape, saved when the run started (restore it from a copy of the "
        "workdir; deleted, the resume reads the teacher's source for it)"))


def _check_same_vocabulary(tokenizer: Tokenizer, teacher_tokenizer: Tokenizer, what: str,
                           remedy: str = "Leave data.tokenizer empty to use the teacher's."):
    mine, theirs = tokenizer.hf_tokenizer.get_vocab(), teacher_tokenizer.hf_tokenizer.get_vocab()
    if mine == theirs:
        return
    differing = sorted(set(mine.items()) ^ set(theirs.items()))[:3]
    raise ValueError(
        f"{what} ({tokenizer.source}, {len(mine)} tokens) is not the teacher's vocabulary "
        f"({teacher_tokenizer.source}, {len(theirs)} tokens; e.g. {differing} differ): the "
        f"student learns the teacher's distribution over ITS vocabulary. {remedy}")


class Task:
    """The `distill` task (see `tl_jax/tasks/__init__.py` for the contract)."""

    progress_keys = ("mlm_accuracy", "agreement")
    summary_keys = ("eval/mlm_accuracy", "eval/teacher_mlm_accuracy", "eval/agreement",
                    "eval/distill_loss")
    # Decides what trains (`freeze_rules`), so the optimizer state's layout: a resume with
    # another value is refused naming it (`train.restore_or_init`).
    state_config_keys = ("distill.freeze_position_embeddings",)

    def __init__(self, config, workdir):
        self.config = config
        m, s = config.model, config.student
        check_loss_settings(config.distill)
        # Paths in config values may be '~/runs/bert' or '$TL_JAX_DATA_DIR/models/...' (the
        # shell expands neither after '='), as every other task's.
        init_from = self.init_from = paths.expand(config.init_from)
        student_init = s.init if s.init in ("teacher", "scratch") else paths.expand(s.init)
        if not init_from:
            raise ValueError(
                "distill needs a teacher: set config.init_from to a tl_jax BERT pretraining "
                "workdir or a Hugging Face BERT directory with an MLM head.")
        overrides = dict(dropout_rate=m.dropout_rate,
                         attention_dropout_rate=m.attention_dropout_rate, dtype=m.dtype)
        kept = kept_teacher(workdir)
        if kept is None:
            # Before its tokenizer is read: an empty directory or a file is not a model.
            downstream.check_encoder_source(init_from)
            # Weights without their vocabulary (a `tl_jax convert` of a Hugging Face folder
            # that had none): data.tokenizer names it, else that is the error.
            named = (paths.expand(config.data.tokenizer)
                     if downstream.has_no_tokenizer(init_from) else "")
            teacher_tokenizer = (Tokenizer.load(named) if named
                                 else downstream.source_tokenizer(init_from))
            self.teacher_config = downstream.architecture(init_from,
                                                          teacher_tokenizer).replace(**overrides)
            check_mlm_head(init_from, self.teacher_config, named)
        else:
            # Its weights come from the checkpoint, as every resumed run's do; checked for an
            # MLM head when the run started.
            teacher_tokenizer = Tokenizer.load(os.path.join(workdir, "tokenizer"))
            self.teacher_config = kept.replace(**overrides)
            warm_start.say_source_gone(
                "distill", "init_from", init_from,
                f"the teacher's shape from {os.path.join(workdir, TEACHER_MODEL_FILE)}, its "
                f"vocabulary from {os.path.join(workdir, 'tokenizer')}")
        tc = self.teacher_config
        if teacher_tokenizer.vocab_size != tc.vocab_size:
            raise ValueError(f"the teacher {init_from} has a {tc.vocab_size}-token "
                             f"embedding table but its tokenizer {teacher_tokenizer.source} has "
                             f"{teacher_tokenizer.vocab_size} tokens")

        # -- the student ---------------------------------------------------------------------
        self.student_layers = None
        if student_init in ("teacher", "scratch"):
            spec = s.layers if student_init == "teacher" else ""
            if student_init == "scratch" and s.layers:
                raise ValueError("student.layers picks teacher layers to copy; it needs "
                                 "student.init=teacher")
            indices = student_layer_indices(tc.num_layers, s.num_layers, spec)
            if student_init == "teacher":
                self.student_layers = indices
            self.model_config = tc.replace(num_layers=len(indices))
        else:  # another BERT of the teacher's width and vocabulary
            # Resumed: the student's shape as the run started it, its checkpoint's
            # resolved_model (its weights come from the checkpoint), so student.init, read only
            # then, may be gone too.
            resumed = downstream.resumed_model(workdir) if kept is not None else None
            source = bert.BertConfig(**resumed) if resumed else None
            if source is not None:
                warm_start.say_source_gone("distill", "student.init", student_init,
                                           "the student's shape from its resolved_model")
            if source is None:
                downstream.check_encoder_source(student_init, "student.init")
                if downstream.has_no_tokenizer(student_init):
                    # Nothing shows its vocabulary is the teacher's, and no key names one.
                    raise ValueError(
                        f"student.init={s.init} has no tokenizer (neither tokenizer.json nor "
                        "vocab.txt) to show its vocabulary is the teacher's: copy the tokenizer "
                        "its weights were trained with into it, or set student.init to teacher "
                        "or scratch")
                student_tokenizer = Tokenizer.load(downstream.tokenizer_path(student_init))
                # data.tokenizer has nothing to do with it: the student's source does not fit.
                _check_same_vocabulary(
                    student_tokenizer, teacher_tokenizer, f"student.init={s.init}'s tokenizer",
                    "Set student.init to a BERT of the teacher's vocabulary, or to teacher (its "
                    "layers, the default) or scratch.")
                source = downstream.architecture(student_init, student_tokenizer)
            if (source.hidden_size, source.vocab_size) != (tc.hidden_size, tc.vocab_size):
                raise ValueError(
                    f"student.init={s.init} is {source.hidden_size} wide with a "
                    f"{source.vocab_size}-token vocabulary; the teacher is {tc.hidden_size} wide "
                    f"with {tc.vocab_size}. The cosine loss compares hidden states and the soft "
                    "targets are over the teacher's vocabulary: both must match.")
            if s.num_layers and s.num_layers != source.num_layers:
                raise ValueError(f"student.num_layers={s.num_layers} but student.init={s.init} "
                                 f"has {source.num_layers} layers")
            if s.layers:
                raise ValueError("student.layers picks teacher layers to copy; it needs "
                                 "student.init=teacher")
            self.model_config = source.replace(**overrides)
        if self.model_config.num_layers > tc.num_layers:
            raise ValueError(f"the student has {self.model_config.num_layers} layers, the "
                             f"teacher {tc.num_layers}: a student must not be deeper")

        # -- data: BERT pretraining's masked-LM batches in the teacher's vocabulary ------------
        data_cfg = ml_collections.ConfigDict(config.data.to_dict())
        if data_cfg.tokenizer:
            _check_same_vocabulary(Tokenizer.load(paths.expand(data_cfg.tokenizer)),
                                   teacher_tokenizer,
                                   f"data.tokenizer={data_cfg.tokenizer}")
        else:
            data_cfg.tokenizer = (downstream.tokenizer_path(init_from) if kept is None
                                  else os.path.join(workdir, "tokenizer"))
        if data_cfg.max_seq_length > tc.max_position_embeddings:
            raise ValueError(f"data.max_seq_length={data_cfg.max_seq_length} is longer than the "
                             f"teacher's position table ({tc.max_position_embeddings}).")
        self.student_init = student_init
        self.data = pretraining.build_pretraining_data(
            data_cfg, tc.max_position_embeddings, workdir, config.seed,
            process_index=jax.process_index(), process_count=jax.process_count(),
            progress=bool(config.train.progress) and jax.process_index() == 0)
        self.tokenizer = self.data.tokenizer

        self.model = bert.BertForPreTraining(self.model_config)     # the student
        self.teacher = bert.BertForPreTraining(tc)
        seq, preds = data_cfg.max_seq_length, data_cfg.max_predictions_per_seq
        if not restricts_ce_to_mask(config.distill):
            preds = seq  # both MLM heads run at every position
        # The student trains (3x forward); the teacher only runs forward. (Counted here, so the
        # trainer does not discount the frozen teacher again.)
        self.flops_count_frozen = True
        self.flops_per_example = (bert.flops_per_example(self.model_config, seq, preds)
                                  + bert.flops_per_example(tc, seq, preds) / 3.0)
        self.tokens_per_example = seq

    # -- data -------------------------------------------------------------------------------

    # The same masked-LM batches as BERT pretraining, checked against the student's config.
    example_batch = bert_pretrain.Task.example_batch
    train_batches = bert_pretrain.Task.train_batches
    eval_batches = bert_pretrain.Task.eval_batches

    def save(self, workdir):
        """The tokenizer, as BERT pretraining's, and the teacher's shape (`kept_teacher`)."""
        bert_pretrain.Task.save(self, workdir)
        checkpoint.save_json(os.path.join(workdir, TEACHER_MODEL_FILE),
                             dataclasses.asdict(self.teacher_config))

    # -- model ------------------------------------------------------------------------------

    def _init(self, module, rng, batch):
        return dict(module.init(
            {"params": rng, "dropout": rng}, batch["input_ids"], batch["segment_ids"],
            batch["input_mask"], masked_positions=batch["masked_positions"],
            deterministic=True)["params"])

    def init_variables(self, rng, batch):
        student_rng, teacher_rng = jax.random.split(rng)
        params = self._init(self.model, student_rng, batch)
        params[TEACHER] = self._init(self.teacher, teacher_rng, batch)
        return {"params": params}

    def init_params(self, params, rng):
        """The teacher from `init_from`; the student from the teacher's layers (or as
        `student.init` says)."""
        del rng
        teacher = _from_student_of(params[TEACHER], self.init_from, self.teacher_config,
                                   TEACHER)
        student = {k: v for k, v in params.items() if k != TEACHER}
        s_init = self.student_init
        if s_init == "teacher":
            student = student_from_teacher(teacher, self.student_layers)
            print(f"[distill] student: {self.model_config.num_layers} layers from teacher layers "
                  f"{self.student_layers}, embeddings and heads from the teacher.", flush=True)
        elif s_init != "scratch":
            student = _from_student_of(student, s_init, self.model_config, "student")
        return dict(student, **{TEACHER: teacher})

    def make_optimizer(self, total_steps):
        """`config.optimizer` over the student; the teacher is a frozen rule (no gradient, no
        optimizer state)."""
        t = transfer.default_config()
        t.rules = freeze_rules(self.config.distill)
        plan_config = ml_collections.ConfigDict(dict(transfer=t, optimizer=self.config.optimizer))
        tx, schedule = transfer.make_task_optimizer(self, plan_config, total_steps,
                                                    steps_per_epoch=1)
        frozen = [p for p, trains in self.transfer_plan.optimizer_mask.items()
                  if p.startswith(f"{TEACHER}/") and trains]
        assert not frozen, f"teacher parameters left trainable: {frozen[:3]}"
        return tx, schedule

    def _forward(self, module, params, batch, rng, train):
        # Every position's logits when the KL is not restricted to the masked ones.
        positions = (batch["masked_positions"] if restricts_ce_to_mask(self.config.distill)
                     else None)
        outputs, _ = module.apply(
            {"params": params}, batch["input_ids"], batch["segment_ids"], batch["input_mask"],
            masked_positions=positions, deterministic=not train, rngs={"dropout": rng})
        return outputs

    def loss_normalizers(self, batch):
        return distillation_normalizers(batch)

    def loss_fn(self, params, batch, rng, train, normalizers=None):
        student = {k: v for k, v in params.items() if k != TEACHER}
        # The teacher always runs in inference mode (no dropout), as in DistilBERT.
        teacher_out = jax.lax.stop_gradient(
            self._forward(self.teacher, params[TEACHER], batch, rng, False))
        student_out = self._forward(self.model, student, batch, rng, train)
        return distillation_loss(student_out, teacher_out, batch, self.config.distill,
                                 normalizers)

    @staticmethod
    def eval_metric_names(config) -> tuple[str, ...]:
        """`distillation_loss`'s metrics (`tasks.eval_metric_names`)."""
        return held_out_metrics(config, (
            "distill_loss", "mlm_loss", "cos_loss", "mlm_accuracy", "teacher_mlm_accuracy",
            "agreement"))
