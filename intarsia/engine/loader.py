"""Finding a checkpoint (local folder or the Hugging Face cache) and reading its tensors."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from huggingface_hub import snapshot_download
from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError
from safetensors import SafetensorError, safe_open

WEIGHT_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]


def resolve_model_path(model: str) -> Path:
    """A local folder as is; otherwise a hub id looked up in the huggingface_hub cache
    (downloaded first unless `HF_HUB_OFFLINE=1`)."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.exists() or model.startswith((".", "/", "~")):
        raise FileNotFoundError(f"model path {model!r} is not a folder with a config.json")
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    try:
        return Path(snapshot_download(model, allow_patterns=WEIGHT_PATTERNS,
                                      local_files_only=offline))
    except (LocalEntryNotFoundError, HFValidationError) as e:
        raise FileNotFoundError(
            f"model {model!r} is neither a local folder nor in the Hugging Face cache"
            + (" (HF_HUB_OFFLINE=1, so nothing was downloaded)" if offline else "")
        ) from e
    except OSError as e:  # no network, repository not found, ...
        raise FileNotFoundError(f"could not fetch model {model!r}: {e}") from e


def safetensors_files(path: Path) -> list[Path]:
    """The checkpoint's shard files, from the index when there is one."""
    index = path / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise ValueError(f"corrupt safetensors index {index}: {e}") from e
        files = [path / name for name in sorted(set(weight_map.values()))]
        missing = [str(f) for f in files if not f.exists()]
        if missing:
            raise FileNotFoundError(f"safetensors shards listed in {index.name} are missing: {missing}")
        return files
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in {path}")
    return files


def iterate_weights(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    for file in safetensors_files(path):
        try:
            with safe_open(file, framework="pt") as f:
                for name in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                    yield name, f.get_tensor(name)
        except SafetensorError as e:
            raise ValueError(f"corrupt safetensors file {file}: {e}") from e
