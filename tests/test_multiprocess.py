"""Two local processes (`jax.distributed` on localhost, CPU collectives, 4 fake devices each)
against one process with 8 devices, for what the BERT test in test_checkpoint.py does not
cover: a fine-tune with eval (a partial last eval batch, eval predictions, the best checkpoint)
and `tl_jax predict`; a fine-tune from pretrained weights (`init_from`) whose params are
sharded over both processes; a SIGTERM that reaches only one of the processes."""
import json
import os
import pathlib
import socket
import subprocess
import sys

import pytest
from conftest import write_polarity_files

ROOT = pathlib.Path(__file__).resolve().parent.parent
WORKER = str(ROOT / "tests" / "workers" / "train_worker.py")
EVAL_ROWS = 21  # two eval batches of 16: the second has 5 real rows, all on process 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(extra)
    return env


# Runs the worker with Ctrl-C raising KeyboardInterrupt as in a terminal, even where pytest
# itself runs with SIGINT ignored (a background job of a script), which its children inherit
# (and Python then leaves ignored).
_CTRL_C_AS_IN_A_TERMINAL = (
    "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")


def start_two_processes(argv, ctrl_c=False, **env):
    """Starts `tl_jax ARGV` as 2 processes (4 CPU devices each); returns their Popens.
    `ctrl_c`: they take SIGINT as Ctrl-C, whatever this process does with it."""
    port = _free_port()
    prefix = [sys.executable] + (["-c", _CTRL_C_AS_IN_A_TERMINAL] if ctrl_c else [])
    return [subprocess.Popen(
        prefix + [WORKER] + argv, cwd=ROOT,
        env=_env(WORKER_DEVICES="4", TL_JAX_COORDINATOR=f"localhost:{port}",
                 TL_JAX_NUM_PROCESSES="2", TL_JAX_PROCESS_ID=str(i), **env),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]


def finish(procs, timeout=600):
    """Waits for both processes; returns their (returncode, stdout, stderr). One still running
    after `timeout` s (a hang: the other one left a collective) is killed and fails the test."""
    try:
        outs = [p.communicate(timeout=timeout) for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        outs = [p.communicate() for p in procs]
        pytest.fail(f"still running after {timeout} s (hung); output tails:\n" + "\n---\n".join(
            f"process {i}: {out[-1000:]}{err[-1000:]}" for i, (out, err) in enumerate(outs)))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return [(p.returncode, out, err) for p, (out, err) in zip(procs, outs)]


def two_processes(argv):
    """Runs `tl_jax ARGV` as 2 processes; returns their (returncode, stdout, stderr)."""
    return finish(start_two_processes(argv))


def _ok(results):
    for rc, _, err in results:
        assert rc == 0, err[-3000:]
    return results


def _files(workdir: pathlib.Path) -> set:
    return {str(p.relative_to(workdir)) for p in workdir.rglob("*")
            if "checkpoints" not in p.parts and "tensorboard" not in p.parts}


def _evals(workdir):
    rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    return {r["step"]: {k: v for k, v in r.items() if k.startswith("eval/")}
            for r in rows if any(k.startswith("eval/") for k in r)}


@pytest.fixture(scope="module")
def polarity_files(data_dir, tmp_path_factory):
    return write_polarity_files(data_dir, tmp_path_factory.mktemp("polarity"), EVAL_ROWS)


def test_two_processes_finetune_with_eval_and_predict_match_one_process(polarity_files,
                                                                       tmp_path):
    # 4 steps of 16, an eval after 2 and 4 over 21 rows (the last eval batch is partial and
    # process 1's half of it is all padding), the best checkpoint kept by eval/loss max (the
    # first eval's); each process trains the tokenizer on the data.
    def train_args(workdir):
        return ["train", "--config=configs/finetune_classify.py:tiny", f"--workdir={workdir}"] + [
            f"--config.{o}" for o in (
                "train.progress=False", "data.max_seq_length=32", "data.batch_size=16",
                f"data.train_file={polarity_files / 'train.jsonl'}",
                f"data.eval_file={polarity_files / 'eval.jsonl'}", "data.max_train_examples=0",
                "data.max_eval_examples=0", "train.steps=4", "train.eval_every=2",
                "train.checkpoint_every=2", "train.log_every=1", "train.keep_checkpoints=1",
                "train.best_metric=eval/loss", "train.best_mode=max")]

    multi = tmp_path / "multi"
    _ok(two_processes(train_args(multi)))

    # Process 0 wrote each file once; nothing missing.
    assert _files(multi) == {
        "config.json", "labels.jsonl", "metrics.jsonl", "summary.json", "tokenizer",
        "tokenizer/tokenizer.json", "tokenizer/vocab.txt", "predictions",
        "predictions/eval_step_2.jsonl", "predictions/eval_step_4.jsonl"}
    evals = _evals(multi)
    assert sorted(evals) == [2, 4]
    for step in (2, 4):
        rows = [json.loads(r) for r in
                (multi / "predictions" / f"eval_step_{step}.jsonl").read_text().splitlines()]
        assert [r["row"] for r in rows] == list(range(EVAL_ROWS))  # every row once, no padding
    from tl_jax import checkpoint, predict
    best, _ = checkpoint.best_step(str(multi), "eval/loss", "max")
    assert best == max(evals, key=lambda s: evals[s]["eval/loss"])
    assert best in checkpoint.saved_steps(str(multi))

    # One process (this one, 8 devices) evaluating the kept checkpoint gets the figures and
    # predictions the two processes wrote (the tokenizer each trained was the same, too).
    eval_file = str(polarity_files / "eval.jsonl")
    expected = (multi / "predictions" / f"eval_step_{best}.jsonl").read_text()
    one = predict.run(str(multi), eval_file, str(tmp_path / "one.jsonl"))
    assert one["step"] == best
    assert set(one["metrics"]) == set(evals[best])
    for key, value in one["metrics"].items():
        assert value == pytest.approx(evals[best][key], abs=1e-5), key
    assert [json.loads(r)["predicted"] for r in (tmp_path / "one.jsonl").read_text().splitlines()
            ] == [json.loads(r)["predicted"] for r in expected.splitlines()]

    # `tl_jax predict` as 2 processes: the same predictions, written once.
    out = tmp_path / "two.jsonl"
    results = _ok(two_processes(["predict", f"--workdir={multi}", f"--input={eval_file}",
                                 f"--output={out}"]))
    assert out.read_text() == expected
    assert f"step {best}, the best kept checkpoint" in results[0][1]


def test_two_processes_fine_tune_from_pretrained_weights_sharded_over_both(polarity_files,
                                                                        tmp_path):
    # The pod scenario: `init_from` a Hugging Face directory, then a tl_jax workdir (the first
    # run's, written by the two processes), with `fsdp` over all 8 devices, so every weight is
    # split over both processes and no process can read one whole (the HF path read the fresh
    # params to the host and failed at start). A learning rate of 0 keeps the weights the
    # runs loaded, so their checkpoints show exactly what each took.
    import flax.linen as nn
    import jax
    import numpy as np

    from tl_jax import checkpoint, predict
    from tl_jax.data.tokenizer import Tokenizer
    from tl_jax.interop import bert as hf_bert
    from tl_jax.models import bert

    train_file, eval_file = polarity_files / "train.jsonl", polarity_files / "eval.jsonl"
    texts = [[json.loads(line)["text"]] for line in open(train_file)]
    tokenizer = Tokenizer.train_wordpiece(texts, vocab_size=400)
    config = bert.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_layers=1,
                             num_heads=2, intermediate_size=32, max_position_embeddings=64)
    params = nn.unbox(bert.BertModel(config).init(jax.random.PRNGKey(7),
                                                   np.zeros((1, 4), np.int32))["params"])
    hf_dir = tmp_path / "hf"
    hf_bert.export(params, config, hf_dir, with_heads=False, tokenizer=tokenizer)

    def fine_tune(workdir, init_from):
        return _ok(two_processes(
            ["train", "--config=configs/finetune_classify.py:tiny", f"--workdir={workdir}",
             f"--config.init_from={init_from}"] + [f"--config.{o}" for o in (
                 "mesh.data=1", "mesh.fsdp=8", "optimizer.learning_rate=0.0",
                 "train.progress=False", "data.max_seq_length=32", "data.batch_size=16",
                 f"data.train_file={train_file}", f"data.eval_file={eval_file}",
                 "data.max_train_examples=0", "data.max_eval_examples=0", "train.steps=1",
                 "train.eval_every=1", "train.checkpoint_every=1", "train.log_every=1")]))

    def encoder(workdir):
        flat, step = checkpoint.load_params_from_workdir(str(workdir))
        assert step == 1
        return {k: v for k, v in flat.items() if k.startswith("bert/")}

    from_hf = tmp_path / "from_hf"
    results = fine_tune(from_hf, hf_dir)
    assert f"[init_from] Hugging Face checkpoint {hf_dir}: encoder loaded" in results[1][1]
    source = hf_bert.load_flat_params(hf_dir)
    loaded = encoder(from_hf)
    assert loaded.keys() == source.keys()
    for name, value in source.items():
        np.testing.assert_array_equal(loaded[name], value, err_msg=name)

    from_tl = tmp_path / "from_tl"
    results = fine_tune(from_tl, from_hf)
    assert f"[init_from] {from_hf} (step 1): took {len(source)} tensors." in results[1][1]
    for name, value in encoder(from_tl).items():
        np.testing.assert_array_equal(value, source[name], err_msg=name)

    # One process with 8 devices evaluates that checkpoint as the two processes did.
    evals = _evals(from_tl)[1]
    one = predict.run(str(from_tl), str(eval_file), str(tmp_path / "one.jsonl"))
    assert set(one["metrics"]) == set(evals)
    for key, value in one["metrics"].items():
        assert value == pytest.approx(evals[key], abs=1e-5), key


def test_a_mesh_whose_batch_shards_span_two_processes_is_refused_at_once(data_dir, tmp_path):
    # A tensor axis of 8 over 2 processes x 4 devices: the batch's one data-parallel shard lies
    # on both processes, which each fed their own rows as if they were copies. The run trained
    # silently on half the batch (other losses than one process); now both stop before any data.
    results = two_processes([
        "train", "--config=configs/bert_pretrain.py:tiny", f"--workdir={tmp_path}",
        "--config.mesh.data=1", "--config.mesh.tensor=8", "--config.train.progress=False",
        f"--config.data.corpus={data_dir / 'enwiki_sample.jsonl'}", "--config.data.max_documents=40",
        "--config.data.tokenizer_vocab_size=1000", "--config.data.max_seq_length=32",
        "--config.data.batch_size=8", "--config.data.eval_batch_size=8", "--config.train.steps=2"])
    for rc, _, err in results:
        assert rc == 1, err[-3000:]
        assert "data-parallel shard 0 of the batch (of 1, data x fsdp) lies on the devices of " \
               "processes [0, 1]" in err
        assert "Traceback" not in err
    assert not (tmp_path / "tokenizer").exists()


def _sigterm_to_process_1(workdir, train_args, steps, sig=None, **env):
    """Starts `tl_jax TRAIN_ARGS` as 2 processes, sends SIGTERM (or `sig`) to process 1 alone
    once process 0 has logged 3 steps, and checks that both saved the same step and exited 143
    (each saying so, naming the signal). Returns that step and the processes' (returncode, stdout, stderr)."""
    import signal
    import time

    from tl_jax import checkpoint

    procs = start_two_processes(train_args, ctrl_c=sig == signal.SIGINT, **env)
    metrics = workdir / "metrics.jsonl"  # written by process 0, a row a step
    deadline = time.time() + 300
    while time.time() < deadline and all(p.poll() is None for p in procs) and not (
            metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        time.sleep(0.1)
    procs[1].send_signal(signal.SIGTERM if sig is None else sig)
    results = finish(procs, timeout=120)  # a few seconds when it works; the old code hung
    saved = [int(n) for n in os.listdir(workdir / "checkpoints") if n.isdigit()]
    assert len(saved) == 1 and 3 <= saved[0] < steps, saved
    # Both processes name the signal that stopped them, process 0 too, which had none.
    name = "SIGINT" if sig == signal.SIGINT else "SIGTERM"
    for rc, out, err in results:
        assert rc == 143, err[-3000:]
        assert f"[checkpoint] {name}: saved step {saved[0]}; exiting." in out
        assert err.strip().splitlines()[-1] == (
            f"tl_jax: Training stopped at step {saved[0]} of {steps} ({name}; saved in "
            f"{workdir / 'checkpoints'}): run the same command again to resume it.")
    _, step = checkpoint.load_params_from_workdir(str(workdir))  # complete: it restores
    assert step == saved[0]
    return saved[0], results


def _sigterm_args(workdir, overrides, steps):
    return ["train", "--config=configs/bert_pretrain.py:tiny", f"--workdir={workdir}"] + [
        f"--config.{o}" for o in overrides + [
            "train.log_every=1", "train.eval_every=0", "train.checkpoint_every=100000",
            f"train.steps={steps}"]]


def test_sigterm_to_one_process_stops_both_at_the_same_step_then_resumes(tiny_bert_overrides,
                                                                         tmp_path):
    # A preemption may reach only one host. Each process used to stop at its own next step
    # boundary: the signalled one went into the (collective) save, the other into the next
    # step's collectives, and both waited there until killed. Now jax's preemption sync manager
    # has both stop at one step: they save it together and exit 143, and the same command
    # resumes from that checkpoint.
    steps = 400  # several steps a second: both are stopped long before the end
    saved, results = _sigterm_to_process_1(
        tmp_path, _sigterm_args(tmp_path, tiny_bert_overrides, steps), steps)
    assert "preemption sync manager is not running" not in results[0][1]
    resumed = _ok(two_processes(_sigterm_args(tmp_path, tiny_bert_overrides, saved + 2)))
    assert f"Resuming from step {saved} " in resumed[0][1]
    assert json.loads((tmp_path / "summary.json").read_text())["step"] == saved + 2


def test_sigterm_to_one_process_stops_both_without_jax_preemption_service(tiny_bert_overrides,
                                                                          tmp_path):
    # With jax's preemption service turned off, the processes share their SIGTERM flags after
    # every step instead, and still stop together.
    steps = 400
    _, results = _sigterm_to_process_1(
        tmp_path, _sigterm_args(tmp_path, tiny_bert_overrides, steps), steps,
        JAX_ENABLE_PREEMPTION_SERVICE="false")
    assert "jax's preemption sync manager is not running" in results[0][1]


@pytest.mark.parametrize("service", ["true", "false"])
def test_ctrl_c_on_one_process_stops_both_at_the_same_step(tiny_bert_overrides, tmp_path,
                                                           service):
    # Ctrl-C in one process's terminal: its KeyboardInterrupt left the other process waiting in
    # the step's collectives, and itself waiting for that one at shutdown, until both were
    # killed. It now stops both after the same step, saved, as SIGTERM does (with jax's
    # preemption service, and with the flags shared every step without it).
    import signal

    steps = 400
    _, results = _sigterm_to_process_1(
        tmp_path, _sigterm_args(tmp_path, tiny_bert_overrides, steps), steps, sig=signal.SIGINT,
        JAX_ENABLE_PREEMPTION_SERVICE=service)
    assert "[train] Ctrl-C on process 1 of 2: every process stops after the same step" in \
        results[1][1] + results[1][2]


def _assert_same_training(multi, single, eval_key):
    """The two workdirs' 3 steps have the same losses and one eval with the same figures."""
    def losses(workdir):
        return {r["step"]: r["loss"] for r in map(json.loads, open(workdir / "metrics.jsonl"))
                if "loss" in r}

    assert sorted(losses(multi)) == sorted(losses(single)) == [1, 2, 3]
    for step, loss in losses(single).items():
        assert losses(multi)[step] == pytest.approx(loss, rel=1e-5)
    (m,), (s,) = _evals(multi).values(), _evals(single).values()
    assert m.keys() == s.keys() and eval_key in m
    for key in s:
        assert m[key] == pytest.approx(s[key], rel=1e-5), key


def test_two_processes_pretrain_a_gpt_on_a_tokenised_corpus_as_one_process_on_its_text(
        data_dir, tmp_path):
    """The pod case of `tl_jax tokenize`: each of two processes reads the tokenised corpus from
    the shared folder and feeds its rows; the losses and held-out figures are those of one
    process training on the text with the same tokenizer."""
    from tl_jax import train
    from tl_jax import config as config_lib
    from tl_jax.data import bpe, tokenized

    rows = [json.loads(line) for _, line in
            zip(range(300), open(data_dir / "polarity_sentences.jsonl"))]
    text = tmp_path / "text.jsonl"
    text.write_text("".join(json.dumps({"text": r["text"]}) + "\n" for r in rows))
    tokenizer = bpe.BPETokenizer.train((r["text"] for r in rows), vocab_size=300, progress=False)
    tokenizer.save(str(tmp_path / "bpe"))
    tokenized.write(str(text), tokenizer, str(tmp_path / "corpus.tok"), progress=False)
    common = ["train.progress=False", "train.log_every=1", "train.steps=3", "train.eval_every=3",
              "train.eval_batches=1", "train.checkpoint_every=3", "data.seq_len=32",
              "model.max_len=32", "data.batch_size=8", "data.eval_batch_size=8",
              "model.dropout_rate=0.0", "model.attention_dropout_rate=0.0"]
    multi = tmp_path / "multi"
    _ok(two_processes(["train", "--config=configs/gpt_pretrain.py:tiny", f"--workdir={multi}"]
                      + [f"--config.{o}" for o in common
                         + [f"data.corpus={tmp_path / 'corpus.tok'}"]]))
    single = tmp_path / "single"
    train.train_and_evaluate(config_lib.load_config(
        "configs/gpt_pretrain.py:tiny",
        common + [f"data.corpus={text}", f"data.tokenizer={tmp_path / 'bpe'}"]), str(single))
    _assert_same_training(multi, single, "eval/perplexity")
    # The vocabulary came with the corpus, and process 0 saved it for a resume.
    assert (bpe.BPETokenizer.load(str(multi / "tokenizer")).hf_tokenizer.get_vocab()
            == tokenizer.hf_tokenizer.get_vocab())


def test_two_processes_pretrain_a_bilm_on_a_words_corpus_as_one_process_on_its_text(
        data_dir, tmp_path):
    """`tl_jax tokenize --words` on a pod: each of two processes reads the ids and spellings
    from the shared folder, counts the same vocabulary and feeds its rows; the losses and
    held-out figures are those of one process training on the text."""
    from tl_jax import train
    from tl_jax import config as config_lib
    from tl_jax.data import tokenized

    text = data_dir / "austen.jsonl"
    tokenized.write(str(text), None, str(tmp_path / "words.tok"), progress=False)
    common = ["train.progress=False", "train.log_every=1", "train.steps=3", "train.eval_every=3",
              "train.eval_batches=1", "train.checkpoint_every=3", "data.max_units=300",
              "model.dropout_rate=0.0"]
    multi = tmp_path / "multi"
    _ok(two_processes(["train", "--config=configs/elmo_pretrain.py:tiny", f"--workdir={multi}"]
                      + [f"--config.{o}" for o in common
                         + [f"data.corpus={tmp_path / 'words.tok'}"]]))
    single = tmp_path / "single"
    train.train_and_evaluate(config_lib.load_config(
        "configs/elmo_pretrain.py:tiny", common + [f"data.corpus={text}"]), str(single))
    _assert_same_training(multi, single, "eval/forward_perplexity")
    assert (multi / "vocab.txt").read_text() == (single / "vocab.txt").read_text()
