#!/usr/bin/env bash
# One pass over what a GPU changes, for a machine with one NVIDIA GPU and tl_jax's packages
# installed (jax with CUDA, flax, optax, orbax, transformers, torch with CUDA):
#   1. model, generation, interop, checkpoint and trainer tests with JAX on the GPU (tests that
#      build a mesh of 2-8 devices need 8 devices and fail on one GPU by design: read the names);
#   2. at the same time, the quickstart end to end, then a BERT pretraining run resumed from its
#      checkpoint (orbax's default, replica-parallel array handler is used off CPU);
#   3. then, alone on the GPU, the two pretraining benchmarks against HF PyTorch on the same GPU.
# Every part has its own time limit and log, so one failure does not hide the others.
# Status: checked on a CPU only (JAX_PLATFORMS=cpu, short limits: every command parses and runs);
# no GPU has run it yet, so no GPU figure in the README comes from it.
#
#   TL_JAX_DATA_DIR=/path/to/shared/data bash benchmarks/gpu_check.sh [OUT_DIR]
#
# Logs go to OUT_DIR (default $OUT, else gpu_check_out; relative to where it is run). The
# quickstart and BERT workdirs are made afresh under $TMPDIR/tl_jax_gpu_check on every pass: a
# second pass in an old one found the runs finished ("nothing to train") and timed nothing.
set -u
out=$(realpath -m -- "${1:-${OUT:-gpu_check_out}}")
work="${TMPDIR:-/tmp}/tl_jax_gpu_check"
rm -rf "$work"
mkdir -p "$out" "$work"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false JAX_PLATFORMS=${JAX_PLATFORMS:-cuda}
export JAX_COMPILATION_CACHE_DIR=/tmp/tl_jax_gpu_cache TOKENIZERS_PARALLELISM=false
py=python3

{
  nvidia-smi -L
  $py -c 'import jax, flax, optax, orbax.checkpoint as o, transformers, torch; print("jax", jax.__version__, jax.devices(), "| flax", flax.__version__, "| optax", optax.__version__, "| transformers", transformers.__version__, "| torch", torch.__version__, torch.cuda.is_available())'
} > "$out/env.log" 2>&1
cat "$out/env.log"

tests=(tests/test_models_gpt.py tests/test_generate.py tests/test_interop_gpt2.py
       tests/test_models_bert.py tests/test_layers.py tests/test_losses.py
       tests/test_checkpoint.py tests/test_train.py tests/test_tasks_clm.py)
(timeout "${TESTS_LIMIT:-240}" $py -m pytest -v -rfE --tb=short -p no:cacheprovider -n 6 \
   "${tests[@]}" > "$out/tests.log" 2>&1; echo "tests rc=$?" >> "$out/tests.log") &

(
  start=$(date +%s)
  timeout "${QUICKSTART_LIMIT:-150}" $py -m tl_jax quickstart --workdir="$work/quickstart"
  echo "quickstart rc=$? in $(( $(date +%s) - start )) s"
  for steps in 100 200; do  # the second run resumes from the first one's checkpoint
    timeout 45 $py -m tl_jax train --config=configs/bert_pretrain.py:mini \
      --workdir="$work/bert" --config.data.corpus=gensim:lee --config.train.steps=$steps \
      --config.model.dtype=bfloat16 --config.train.progress=False
    echo "bert mini bf16 to step $steps rc=$?"
  done
) > "$out/end_to_end.log" 2>&1 &
wait
tail -n 40 "$out/tests.log"
grep -E "rc=|done:|accuracy|resum|Error" "$out/end_to_end.log"

{
  timeout "${GPT_BENCH_LIMIT:-110}" $py benchmarks/gpt_train_and_generate.py --sizes=small \
    --batch=16 --seq=512 --dtype=bfloat16 --steps=20 --repeats=1
  echo "gpt bench rc=$?"
  timeout "${BERT_BENCH_LIMIT:-90}" $py benchmarks/bert_pretrain_vs_hf.py --settings base_b128 \
    --dtype=bfloat16 --steps=20 --repeats=1
  echo "bert bench rc=$?"
} > "$out/bench.log" 2>&1
grep -v -i "warn" "$out/bench.log" | tail -n 20
