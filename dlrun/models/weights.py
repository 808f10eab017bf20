"""`model.weights=<file>`: start from weights in a file rather than from the initialisation.

The file is a state dict (`torch.save(model.state_dict(), path)`, torchvision's published
weights, a Lightning checkpoint's `state_dict`) or a dlrun checkpoint (`checkpoints/best.pt`, whose
`model` entry is used). It is read with `torch.load(weights_only=True)`: tensors and plain
containers only, no code runs. The weights must fit the model exactly; otherwise one line names the
missing and unexpected keys and the shapes that differ. A model may read a foreign layout itself
(`load_foreign_weights`: model=torchvision takes torchvision's own state dict, ImageNet head and
all, before its head is replaced).

A file named as torchvision publishes it (`resnet18-f37072fd.pth`: the name carries the start of
its SHA-256) is checked against that hash, as torchvision checks a download: a wrong or damaged
file under that name is refused in one line, also when it sits in torch's hub cache.
"""

from __future__ import annotations

import functools
import hashlib
import re
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from dlrun.errors import ConfigError

HASH_IN_NAME = re.compile(r"-([a-f0-9]{8,})\.pth?$")  # torch.hub's convention: <name>-<sha256 prefix>.pth


def load_weights(model: nn.Module, path: str) -> None:
    """Load `path` into `model` (in place); ConfigError naming `model.weights` when it cannot."""
    state = read_weights(path)
    foreign = getattr(model, "load_foreign_weights", None)
    if foreign is not None and set(state) != set(model.state_dict()):
        foreign(state, path)
        return
    load_exactly(model, state, f"model.weights={path}")


def read_weights(path: str) -> dict[str, torch.Tensor]:
    """The state dict a weights file holds (a dlrun checkpoint's `model`, a Lightning one's `state_dict`)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"model.weights={path}: no such file")
    expected = published_hash(file.name)
    if expected is not None:
        check_hash(file, expected, f"model.weights={path}")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated, not a PyTorch file, or pickled code weights_only refuses
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0].split(". ")[0]
        raise ConfigError(f"model.weights={path} cannot be read as PyTorch weights ({type(error).__name__}: "
                          f"{reason}); is the file complete?") from None
    for key in ("model", "state_dict"):  # a dlrun checkpoint; a Lightning checkpoint
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"model.weights={path} holds no state dict (names → tensors); save one with "
                          "torch.save(model.state_dict(), path)")
    return state


def load_exactly(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """`module.load_state_dict(state)`, or one line naming the missing and unexpected keys and the shapes that
    differ."""
    own = module.state_dict()
    missing = [key for key in own if key not in state]
    unexpected = [key for key in state if key not in own]
    shapes = [f"{key} {list(state[key].shape)} in the file, {list(own[key].shape)} in the model"
              for key in own if key in state and state[key].shape != own[key].shape]
    if missing or unexpected or shapes:
        problems = [f"{len(missing)} missing ({_listed(missing)})" if missing else "",
                    f"{len(unexpected)} unexpected ({_listed(unexpected)})" if unexpected else "",
                    f"{len(shapes)} of another shape ({'; '.join(shapes[:3])}{'; ...' if len(shapes) > 3 else ''})"
                    if shapes else ""]
        raise ConfigError(f"{what} does not fit the model ({type(module).__name__}): keys "
                          f"{', '.join(problem for problem in problems if problem)}")
    module.load_state_dict(state)


def published_hash(name: str) -> Optional[str]:
    """The SHA-256 prefix in a weights file's name when torchvision publishes a file of that name, else None.

    Only torchvision's own names count: `run-20240101.pth` also looks like `<name>-<hex>.pth`."""
    found = HASH_IN_NAME.search(name)
    if found is None or name not in _torchvision_file_names():
        return None
    return found.group(1)


def check_hash(path: Path, prefix: str, what: str) -> None:
    """ConfigError unless the file's SHA-256 starts with `prefix` (torch.hub's check of a download)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    if not digest.hexdigest().startswith(prefix):
        raise ConfigError(f"{what}: {path} is not the file torchvision publishes under that name (its SHA-256 "
                          f"starts {digest.hexdigest()[:len(prefix)]}, the name says {prefix}); delete it and "
                          "download it again")


@functools.lru_cache(maxsize=1)
def _torchvision_file_names() -> frozenset[str]:
    # torchvision takes a second or two to import: only for a file whose name looks like one of its own
    from torchvision.models import get_model_weights, list_models

    return frozenset(weights.url.rpartition("/")[2] for name in list_models() for weights in get_model_weights(name))


def _listed(keys: list[str], shown: int = 4) -> str:
    return ", ".join(keys[:shown]) + (", ..." if len(keys) > shown else "")
