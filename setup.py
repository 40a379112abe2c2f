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
        # The floors are the oldest releases the tests were run on together (jax 0.8.1, flax
        # 0.11.2, optax 0.2.5, orbax 0.11.31: the model, parallel, optimizer, training,
        # checkpoint, transfer and generation tests). jax 0.8.0 and older cannot run a bfloat16
        # matmul with a float32 result on a CPU (mixed-precision training fails) and 0.7.0 has
        # no jax.set_mesh; flax 0.11.1 and older do not see the mesh jax.set_mesh sets, so the
        # models' activation constraints do nothing on a mesh; optax 0.2.4 lacks optax.tree.
        "jax>=0.8.1",
        "flax>=0.11.2",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.11.31",  # CheckpointManagerOptions(lightweight_initialize=...)
        "ml-collections>=0.1.1",
        "absl-py",
        "numpy",
        # Tested at these floors too (transformers 4.40.2, tokenizers 0.19.1): the interop,
        # tokenizer, fill-mask, pretraining-data, fine-tuning and distillation tests.
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
