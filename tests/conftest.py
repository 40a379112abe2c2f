"""Test setup: 8 fake CPU devices, and the shared real-data folder.

The device flag must be set before jax is imported anywhere, so it lives at the top of conftest.
"""
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pathlib

import pytest


@pytest.fixture(scope="session")
def data_dir() -> pathlib.Path:
    """The real-data folder (`TL_JAX_DATA_DIR`, set by `.ci/run`).

    A missing folder is a failure, not a skip: tests that need real data prove nothing without it.
    """
    path = os.environ.get("TL_JAX_DATA_DIR")
    if not path:
        pytest.fail("TL_JAX_DATA_DIR is not set; point it at the shared data folder (see README).")
    path = pathlib.Path(path)
    if not (path / "README.md").exists():
        pytest.fail(f"TL_JAX_DATA_DIR={path} does not look like the shared data folder.")
    return path
