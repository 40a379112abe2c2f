"""Runs `tl_jax train` in a subprocess for the fault-tolerance tests.

Environment knobs (test-only; production code has none of these):
  WORKER_DEVICES=N          fake CPU devices in this process (default 8)
  WORKER_KILL_IN_SAVE=STEP  SIGKILL this process while the checkpoint of STEP is being
                            committed: its files are written but not yet renamed into place.
  WORKER_CTRL_C_IN_SAVE=STEP  Ctrl-C (SIGINT) this process while the checkpoint of STEP is
                            being committed in orbax's background thread, which then takes a
                            second more to finish it.
"""
import os
import signal
import sys

os.environ["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count="
                           f"{os.environ.get('WORKER_DEVICES', '8')}")
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
    import time

    from orbax.checkpoint._src.path import atomicity

    for cls in (atomicity.AtomicRenameTemporaryPath, atomicity.CommitFileTemporaryPath):
        original = cls.finalize

        async def finalize(self, *args, _original=original, **kwargs):
            if os.path.basename(str(self.get_final())) == str(step):
                print(f"worker: Ctrl-C while committing step {step}", flush=True)
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(1.0)  # the background thread goes on; the main thread is interrupted
            return await _original(self, *args, **kwargs)

        cls.finalize = finalize


if __name__ == "__main__":
    if os.environ.get("WORKER_KILL_IN_SAVE"):
        install_kill_in_save(int(os.environ["WORKER_KILL_IN_SAVE"]))
    if os.environ.get("WORKER_CTRL_C_IN_SAVE"):
        install_ctrl_c_in_save(int(os.environ["WORKER_CTRL_C_IN_SAVE"]))
    from tl_jax import main

    main.main(sys.argv[1:])
