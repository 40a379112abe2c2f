"""Runs `tl_jax train` in a subprocess for the fault-tolerance tests.

Environment knobs (test-only; production code has none of these):
  WORKER_DEVICES=N          fake CPU devices in this process (default 8)
  TL_JAX_TEST_FAST_COMPILE  XLA flags added to the device count (tests/conftest.py sets the
                            suite's fast-compile flags)
  WORKER_KILL_IN_SAVE=STEP  SIGKILL this process while the checkpoint of STEP is being
                            committed: its files are written but not yet renamed into place.
  WORKER_CTRL_C_IN_SAVE=STEP  Ctrl-C (KeyboardInterrupt in the main thread) while the
                            checkpoint of STEP is being committed in orbax's background thread,
                            which then takes a second more to finish it.
"""
import os
import signal
import sys

os.environ["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count="
                           f"{os.environ.get('WORKER_DEVICES', '8')} "
                           + os.environ.get("TL_JAX_TEST_FAST_COMPILE", "")).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def install_kill_in_save(step: int) -> None:
    from orbax.checkpoint._src.path import atomicity

    for cls in (atomicity.AtomicRenameTemporaryPath, atomicity.CommitFileTemporaryPath):
        original = cls.finalize

        async def finalize(self, *args, _original=original, **kwargs):
            if os.path.basename(str(self.get_final())) == str(step):
                print(f"worker: killing myself while committing step {step}", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
            return await _original(self, *args, **kwargs)

        cls.finalize = finalize


def install_ctrl_c_in_save(step: int) -> None:
    """Ctrl-C lands in the main thread right after the save of `step` is handed to orbax's
    background thread, whose commit then takes a second more.

    Raised there rather than sent as a SIGINT from the background thread: a real signal lands
    wherever the main thread happens to be, and inside an `asyncio.run` (orbax runs some in the
    main thread) asyncio's own SIGINT handler swallows it when the running task finishes anyway,
    so under load the run went on as if nothing had been pressed."""
    import time

    from orbax.checkpoint._src.path import atomicity

    from tl_jax import checkpoint

    for cls in (atomicity.AtomicRenameTemporaryPath, atomicity.CommitFileTemporaryPath):
        original = cls.finalize

        async def finalize(self, *args, _original=original, **kwargs):
            if os.path.basename(str(self.get_final())) == str(step):
                time.sleep(1.0)  # still being written when the interrupt reaches the trainer
            return await _original(self, *args, **kwargs)

        cls.finalize = finalize

    save = checkpoint.Checkpointer.save

    def save_then_ctrl_c(self, at, *args, **kwargs):
        saved = save(self, at, *args, **kwargs)
        if at == step:
            print(f"worker: Ctrl-C while committing step {step}", flush=True)
            raise KeyboardInterrupt
        return saved

    checkpoint.Checkpointer.save = save_then_ctrl_c


if __name__ == "__main__":
    if os.environ.get("WORKER_KILL_IN_SAVE"):
        install_kill_in_save(int(os.environ["WORKER_KILL_IN_SAVE"]))
    if os.environ.get("WORKER_CTRL_C_IN_SAVE"):
        install_ctrl_c_in_save(int(os.environ["WORKER_CTRL_C_IN_SAVE"]))
    from tl_jax import main

    main.main(sys.argv[1:])
