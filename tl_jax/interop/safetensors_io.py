"""Reading and writing checkpoint tensors: HF weight files and flat `/`-joined param trees.

Hugging Face directories hold `model.safetensors` (possibly sharded with an `.index.json`) or,
in older ones, `pytorch_model.bin`. Reading `.bin` needs torch (the `test` extra); safetensors
needs only the `safetensors` package.
"""
from __future__ import annotations

import json
import pathlib
import pickle
import re
from typing import Mapping

import numpy as np
from flax import traverse_util
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

# File names in the order we prefer them (safetensors is safe to load and needs no torch).
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def find_weight_file(directory) -> pathlib.Path | None:
    """The first weight file of `WEIGHT_FILES` present in `directory`, or None."""
    directory = pathlib.Path(directory)
    for name in WEIGHT_FILES:
        if (directory / name).exists():
            return directory / name
    return None


def _read_safetensors(path: pathlib.Path) -> dict[str, np.ndarray]:
    """All tensors of a safetensors file; bfloat16 ones (ml_dtypes in numpy) as float32."""
    tensors = {}
    try:
        with safe_open(str(path), framework="numpy") as f:
            for name in f.keys():
                try:
                    tensor = f.get_tensor(name)
                except TypeError as e:  # a dtype this numpy cannot hold; say which tensor
                    raise ValueError(
                        f"{path}: cannot read tensor {name!r} as numpy ({e}); convert the "
                        "checkpoint to float32 first") from e
                tensors[name] = (tensor.astype(np.float32) if tensor.dtype.name == "bfloat16"
                                 else tensor)
    except SafetensorError as e:  # truncated (an interrupted download) or not safetensors
        raise _unreadable(path, e) from e
    return tensors


def tensor_names(path) -> list[str]:
    """The tensor names of one safetensors file, from its header alone: no tensor is read."""
    try:
        with safe_open(str(path), framework="numpy") as f:
            return list(f.keys())
    except SafetensorError as e:
        raise _unreadable(path, e) from e


def _unreadable(path, error) -> ValueError:
    return ValueError(f"{path} is not a readable safetensors file ({error}); an interrupted "
                      "download leaves such a file: fetch it again")


def _read_torch_bin(path: pathlib.Path) -> dict[str, np.ndarray]:
    try:
        import torch  # only the legacy format needs it
    except ImportError as e:
        raise ImportError(
            f"{path} is a PyTorch pickle; reading it needs torch (pip install 'tl_jax[test]'), "
            "or convert the checkpoint to model.safetensors"
        ) from e
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, not a pickle, or a pickle of other objects
        raise ValueError(f"{path} is not a readable PyTorch checkpoint ({_torch_load_reason(e)})"
                         "; fetch it again, or convert the checkpoint to model.safetensors"
                         ) from e
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict of tensors")
    return {name: t.detach().float().numpy() if t.dtype == torch.bfloat16 else t.detach().numpy()
            for name, t in state.items()}


def _torch_load_reason(error: Exception) -> str:
    """Why `torch.load(weights_only=True)` failed, in a few words. Its own message for a file
    that is no pickle of tensors advises retrying with `weights_only=False`, which can run
    arbitrary code: not advice to pass on about a file that is most likely broken."""
    text = str(error)
    if isinstance(error, pickle.UnpicklingError) or "weights_only" in text:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if found:
            return (f"it pickles {found.group(1)}, not only tensors, and tl_jax unpickles "
                    "nothing else")
        return "its bytes are neither a PyTorch zip archive nor a pickle of tensors"
    if isinstance(error, EOFError):
        return "the file is empty or ends too early"
    # "PytorchStreamReader failed reading zip archive: not a ZIP archive. This is an internal
    # miniz error. ...": the first sentence says it.
    return f"{type(error).__name__}: {text.splitlines()[0].split('. ')[0] if text else ''}"


def _hf_weight_file(directory: pathlib.Path) -> pathlib.Path:
    """`find_weight_file`, or FileNotFoundError naming the files looked for."""
    path = find_weight_file(directory)
    if path is None:
        raise FileNotFoundError(
            f"{directory} holds no weights: expected one of {', '.join(WEIGHT_FILES)}"
        )
    return path


def _weight_map(path: pathlib.Path) -> dict[str, str]:
    """A sharded checkpoint's index (`*.index.json`): tensor name -> shard file."""
    try:
        weight_map = json.loads(path.read_text())["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError(f"weight_map is a {type(weight_map).__name__}")
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{path} is not a weight index (a JSON object whose weight_map "
                         f"maps tensor names to shard files): {e!r}") from e
    return weight_map


def hf_tensor_names(directory) -> tuple[list[str], pathlib.Path]:
    """The tensor names of the checkpoint in `directory`, and its weight file, reading no tensor
    where the format allows: a safetensors file's header, a sharded checkpoint's index. A
    `pytorch_model.bin` has neither (a pickle: its names come with its tensors), so that one is
    read whole, as `read_hf_tensors` reads it.

    Raises FileNotFoundError naming the files looked for when there is none.
    """
    directory = pathlib.Path(directory)
    path = _hf_weight_file(directory)
    if path.name.endswith(".index.json"):
        return list(_weight_map(path)), path
    if path.suffix == ".safetensors":
        return tensor_names(path), path
    return list(_read_torch_bin(path)), path


def read_hf_tensors(directory) -> tuple[dict[str, np.ndarray], pathlib.Path]:
    """All tensors of the checkpoint in `directory` as numpy arrays, and the file read.

    Raises FileNotFoundError naming the files looked for when there is none.
    """
    directory = pathlib.Path(directory)
    path = _hf_weight_file(directory)
    if path.name.endswith(".index.json"):
        shards = sorted(set(_weight_map(path).values()))
        tensors = {}
        for shard in shards:
            shard_path = directory / shard
            if not shard_path.exists():
                raise FileNotFoundError(f"{path} names shard {shard}, which is not in {directory}")
            reader = _read_safetensors if shard.endswith(".safetensors") else _read_torch_bin
            tensors.update(reader(shard_path))
        return tensors, path
    reader = _read_safetensors if path.suffix == ".safetensors" else _read_torch_bin
    return reader(path), path


def write_safetensors(path, tensors: Mapping[str, np.ndarray], metadata=None) -> None:
    """Writes numpy tensors to `path`; `metadata={"format": "pt"}` is what transformers expects."""
    arrays = {name: np.ascontiguousarray(np.asarray(v)) for name, v in tensors.items()}
    save_file(arrays, str(path), metadata=dict(metadata or {"format": "pt"}))


def read_safetensors(path) -> dict[str, np.ndarray]:
    """Reads every tensor of one safetensors file."""
    return _read_safetensors(pathlib.Path(path))


def flatten_params(params, to_host: bool = True) -> dict[str, np.ndarray]:
    """A nested param tree as `{"a/b/kernel": array}` (numpy, host memory).

    `to_host=False` keeps the leaves as they are: a trainer's params sharded over several
    processes cannot be read to any one host (`np.asarray` raises), and merging weights into
    them needs only their names, shapes and dtypes."""
    flat = traverse_util.flatten_dict(_to_dict(params), sep="/")
    return {k: np.asarray(v) for k, v in flat.items()} if to_host else flat


def unflatten_params(flat: Mapping[str, np.ndarray]) -> dict:
    """The inverse of `flatten_params`."""
    return traverse_util.unflatten_dict(dict(flat), sep="/")


def _to_dict(tree):
    # FrozenDict and other mappings -> plain dicts, so flatten_dict sees every level.
    if isinstance(tree, Mapping):
        return {k: _to_dict(v) for k, v in tree.items()}
    return tree
