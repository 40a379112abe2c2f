from setuptools import find_packages, setup

setup(
    name="tl_jax",
    version="0.1.0",
    description="Transfer learning for NLP in JAX/Flax: pretrain, adapt and fine-tune language models.",
    # configs/ ships inside the package as tl_jax/configs, so that `--config=configs/NAME.py`
    # also resolves after a plain (non-editable) install, e.g. on Colab.
    packages=find_packages(include=["tl_jax", "tl_jax.*"]) + ["tl_jax.configs"],
    package_dir={"tl_jax.configs": "configs"},
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.4.30",
        "flax>=0.8.5",
        "optax>=0.2.2",
        "orbax-checkpoint>=0.11.31",  # CheckpointManagerOptions(lightweight_initialize=...)
        "ml-collections>=0.1.1",
        "absl-py",
        "numpy",
        "tokenizers>=0.19",
        "transformers>=4.40",
        "safetensors",
        "tensorflow-datasets",
        "gensim>=4.3",
        "scipy",
        "tqdm",
        "tensorboardX",
    ],
    extras_require={
        "test": [
            "pytest",
            "pytest-xdist",
            "torch==2.13.0",
            "nbclient",
            "nbformat",
            "ipykernel",
            "matplotlib",  # tl_jax sweep's plots are tested
            "pyflakes",  # tests/test_source.py: names used but never defined
        ],
        "notebooks": ["jupyter", "matplotlib"],
    },
    entry_points={"console_scripts": ["tl_jax=tl_jax.main:main"]},
)
