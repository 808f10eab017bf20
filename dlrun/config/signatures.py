"""What the config checks need to know of each `_target_`'s signature, without importing the target.

Reading a signature with `inspect` imports the target's module, and with it torch, torchvision or
scikit-learn: seconds before a typo'd key can be reported. The checks (dlrun.config.checks) read
`signatures.json` instead: for every `_target_` of the shipped config groups, the parameters a
YAML may set and what each accepts. The table is made from the code and kept equal to it by a
test (tests/test_startup.py); after changing a target's signature, or adding a group option:

    make signatures        # python -c "from dlrun.config.signatures import main; main(['--write'])"

A target that is not in the table (a user's own `_target_`) is imported and described on the spot.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import re
import sys
import types
import typing
from importlib import metadata
from importlib.resources import files
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from omegaconf import OmegaConf

TABLE = Path(__file__).with_name("signatures.json")
TORCH_VERSION_KEY = "_torch_version"  # not a target: the torch the `torch.*` entries were read from
# Annotations the checks hold a value to: the Python types a YAML scalar may have for each.
PLAIN_TYPES: dict[str, tuple[type, ...]] = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}


def describe(factory: Callable[..., Any]) -> dict[str, Any]:
    """What the checks need of `factory`'s signature, as JSON-ready data.

    `parameters`: name → `required` (no default, settable by keyword), `number` (the annotation
    asks for a number, also in a union such as `float | Tensor`), `type` (int, float, bool or str
    when annotated as exactly that), `length` (n for a fixed-length tuple), `element_number`
    (its elements are numbers), `example` (the default, when a tuple of that length).
    `var_keyword`: it takes **kwargs. `metric_driven`: a scheduler that steps on a metric value.
    """
    signature = inspect.signature(factory).parameters
    parameters = {}
    for name, parameter in signature.items():
        if parameter.kind in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL):
            continue
        annotation, default = parameter.annotation, parameter.default
        length = _tuple_length(annotation)
        element = _tuple_element(annotation)
        parameters[name] = {
            "required": default is inspect.Parameter.empty and parameter.kind in (
                inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY),
            "number": _numeric(annotation),
            "type": _plain_type(annotation),
            "length": length,
            "element_number": element is not None and _numeric(element),
            "example": list(default) if isinstance(default, tuple) and len(default) == length else None,
        }
    return {"parameters": parameters,
            "var_keyword": any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.values()),
            "metric_driven": _metric_driven(factory)}


def signature_of(target: str) -> dict[str, Any]:
    """`describe` of the callable `target` names: from the table when it is there, else by importing it.

    Raises ImportError (or AttributeError) when `target` cannot be imported."""
    known = table().get(target)
    if known is not None and not (target.startswith("torch.") and torch_version() != table_torch_version()):
        return known
    from hydra.utils import get_object  # a user's own target, or torch's when another torch is installed

    return describe(get_object(target))


def table() -> dict[str, dict[str, Any]]:
    """The stored table (empty if the file is missing: every target is then imported to be described)."""
    return {target: entry for target, entry in _stored().items() if target != TORCH_VERSION_KEY}


def table_torch_version() -> Optional[str]:
    """The torch version the table's `torch.*` signatures were read from: with another, they are read live."""
    return _stored().get(TORCH_VERSION_KEY)


@functools.lru_cache(maxsize=1)
def torch_version() -> Optional[str]:
    """The installed torch's version, from its package metadata (torch itself is not imported)."""
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=1)
def _stored() -> dict[str, Any]:
    try:
        return json.loads(TABLE.read_text())
    except FileNotFoundError:
        return {}


def shipped_targets(conf: Any = None) -> list[str]:
    """Every `_target_` the shipped group options and experiments name (Hydra's own configs left out)."""
    root = conf if conf is not None else files("dlrun.conf")
    found: set[str] = set()
    for path in _yaml_files(root):
        with path.open() as handle:
            found.update(_targets_in(OmegaConf.to_container(OmegaConf.load(handle), resolve=False)))
    return sorted(found)


def build_table() -> dict[str, dict[str, Any]]:
    """The table as the code says it is now (imports every shipped target)."""
    from hydra.utils import get_object

    return {target: describe(get_object(target)) for target in shipped_targets()}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="make signatures", description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"rewrite {TABLE.name} from the code")
    arguments = parser.parse_args(argv)
    built = build_table()
    if arguments.write:
        TABLE.write_text(_as_json(built))
        print(f"wrote {len(built)} signatures (torch {torch_version()}) to {TABLE}")
        return 0
    stale = sorted(target for target in set(built) | set(table()) if built.get(target) != table().get(target))
    if table_torch_version() != torch_version():
        stale.append(f"torch {table_torch_version()} (installed: {torch_version()})")
    print(f"{TABLE.name}: " + (f"out of date for {', '.join(stale)}; run with --write" if stale else "up to date"))
    return 1 if stale else 0


def _as_json(built: dict[str, dict[str, Any]]) -> str:
    """The table with one line per parameter: short, and a signature change is a readable diff."""
    blocks = []
    for target in sorted(built):
        entry = built[target]
        lines = [f'  "{name}": {json.dumps(facts, sort_keys=True)}' for name, facts in entry["parameters"].items()]
        head = json.dumps({key: value for key, value in entry.items() if key != "parameters"}, sort_keys=True)[1:-1]
        blocks.append(f' "{target}": {{{head}, "parameters": {{\n' + ",\n".join(lines) + "}}")
    return f'{{\n "{TORCH_VERSION_KEY}": {json.dumps(torch_version())},\n' + ",\n".join(blocks) + "\n}\n"


def _yaml_files(folder: Any) -> Iterator[Any]:
    for entry in folder.iterdir():
        if entry.is_dir() and entry.name != "hydra" and not entry.name.startswith(("_", ".")):
            yield from _yaml_files(entry)
        elif entry.name.endswith(".yaml"):
            yield entry


def _targets_in(tree: Any) -> Iterator[str]:
    """`_target_` strings anywhere in a loaded YAML, except under a top-level `hydra:` key."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            if key == "_target_" and isinstance(value, str) and "${" not in value:
                yield value
            elif key != "hydra":
                yield from _targets_in(value)
    elif isinstance(tree, list):
        for value in tree:
            yield from _targets_in(value)


def _plain_type(annotation: Any) -> Optional[str]:
    """"int", "float", "bool" or "str" for exactly that annotation (a type or its name); None otherwise."""
    name = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", None)
    return name if name in PLAIN_TYPES and annotation in (int, float, bool, str, name) else None


def _metric_driven(factory: Any) -> bool:
    """A subclass of torch's ReduceLROnPlateau; torch is not imported for this (such a class has imported it)."""
    lr_scheduler = sys.modules.get("torch.optim.lr_scheduler")
    return (lr_scheduler is not None and isinstance(factory, type)
            and issubclass(factory, lr_scheduler.ReduceLROnPlateau))


def _numeric(annotation: Any) -> bool:
    """Whether the annotation asks for a number: float or int, alone or in a union with non-text types
    (`float | Tensor`, `Optional[int]`); also written as a string (`from __future__ import annotations`)."""
    if isinstance(annotation, str):
        text = re.sub(r"^Optional\[(.*)\]$", r"\1", annotation.replace(" ", ""))
        parts = set(text.split("|"))
        return bool(parts & {"float", "int"}) and parts <= {"float", "int", "None", "Tensor", "torch.Tensor"}
    if annotation in (int, float):
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [member for member in typing.get_args(annotation) if member is not type(None)]
        return any(member in (int, float) for member in members) and not any(
            member in (str, bool, typing.Any, object) or typing.get_origin(member) in (tuple, list, dict)
            for member in members)
    return False


def _tuple_element(annotation: Any) -> Any:
    """The type of every element of `tuple[X, X, ...]` when they all share one (None otherwise)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        elements = {_tuple_element(member) for member in typing.get_args(annotation)} - {None}
        return elements.pop() if len(elements) == 1 else None
    arguments = typing.get_args(annotation)
    if typing.get_origin(annotation) is tuple and arguments and len(set(arguments) - {Ellipsis}) == 1:
        return arguments[0]
    return None


def _tuple_length(annotation: Any) -> Optional[int]:
    """n for `tuple[X, Y, ...n types]` (also inside `Optional[...]` / `X | None`); None for anything else."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        lengths = {_tuple_length(member) for member in typing.get_args(annotation)} - {None}
        return lengths.pop() if len(lengths) == 1 else None
    arguments = typing.get_args(annotation)
    if typing.get_origin(annotation) is tuple and arguments and Ellipsis not in arguments:
        return len(arguments)
    return None


if __name__ == "__main__":
    sys.exit(main())
