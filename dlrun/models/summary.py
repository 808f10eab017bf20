"""Per-layer model summary for the actual input: output shape, parameters, forward FLOPs."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from rich.table import Table
from torch import nn


@dataclass
class LayerRow:
    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int
    flops: int


@dataclass
class ModelSummary:
    rows: list[LayerRow]
    total_params: int
    flops: int  # forward FLOPs for one example (a multiply-add counts as 2)

    def table(self) -> Table:
        table = Table(title="model", show_footer=True)
        table.add_column("layer", footer="total")
        table.add_column("type")
        table.add_column("output shape")
        table.add_column("params", justify="right", footer=f"{self.total_params:,}")
        table.add_column("FLOPs", justify="right", footer=_human(self.flops))
        for row in self.rows:
            table.add_row(row.name, row.kind, str(list(row.output_shape)), f"{row.params:,}", _human(row.flops))
        return table


def summarize_model(model: nn.Module, example: torch.Tensor) -> ModelSummary:
    """Run `example` (batch of 1) through `model` in eval mode and record every leaf layer.

    An attention layer (`nn.MultiheadAttention`) is one row: it computes with its projection
    weights directly, so its sub-layers are never called. Parameters that belong to no recorded
    layer (e.g. a class token held by the model itself) get a row of their own at the top, so the
    rows add up to the total. PyTorch's fused Transformer path, which skips the layers inside a
    block, is turned off for this one forward pass.
    """
    rows: list[LayerRow] = []
    hooks = []

    def record(name: str):
        def hook(module: nn.Module, inputs, output) -> None:
            out = output[0] if isinstance(output, tuple) else output
            params = sum(p.numel() for p in module.parameters(recurse=_is_unit(module)))
            if not isinstance(out, torch.Tensor):  # e.g. a detector's image-list or anchor layers
                rows.append(LayerRow(name, type(module).__name__, (), params, 0))
                return
            rows.append(LayerRow(name, type(module).__name__, tuple(out.shape[1:]), params,
                                 _layer_flops(module, inputs, out)))
        return hook

    recorded = _recorded_layers(model)
    for name, module in recorded.items():
        hooks.append(module.register_forward_hook(record(name)))
    was_training, fastpath = model.training, torch.backends.mha.get_fastpath_enabled()
    model.eval()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad():
            model(example)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        model.train(was_training)
        for handle in hooks:
            handle.remove()
    total = sum(p.numel() for p in model.parameters())
    return ModelSummary(_unrecorded_parameters(model, recorded) + rows, total, sum(row.flops for row in rows))


def _is_unit(module: nn.Module) -> bool:
    """Layers summarised as one row with their sub-layers' parameters: attention."""
    return isinstance(module, nn.MultiheadAttention)


def _recorded_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Leaf layers and attention units, by name; nothing inside an attention unit."""
    layers: dict[str, nn.Module] = {}
    units: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(f"{unit}.") for unit in units):
            continue
        if _is_unit(module):
            units.append(name)
        if _is_unit(module) or not list(module.children()):
            layers[name] = module
    return layers


def _unrecorded_parameters(model: nn.Module, recorded: dict[str, nn.Module]) -> list[LayerRow]:
    """A row per module holding parameters of its own outside the recorded layers."""
    inside = {id(p) for layer in recorded.values() for p in layer.parameters()}
    rows = []
    for name, module in model.named_modules():
        own = [(n, p) for n, p in module.named_parameters(recurse=False) if id(p) not in inside]
        if own:
            label = ", ".join(f"{name}.{n}" if name else n for n, _ in own)
            rows.append(LayerRow(label, "Parameter", (), sum(p.numel() for _, p in own), 0))
    return rows


def _layer_flops(module: nn.Module, inputs: tuple, output: torch.Tensor) -> int:
    """FLOPs of the layers that dominate compute; elementwise layers (softmax too) count as free."""
    per_example = output[0].numel() if output.dim() > 0 else 0
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        kernel = module.weight[0].numel()  # in_channels / groups x kernel area
        return 2 * per_example * kernel
    if isinstance(module, nn.Linear):
        return 2 * per_example * module.in_features
    if isinstance(module, (nn.RNN, nn.GRU, nn.LSTM)):
        gates = {nn.RNN: 1, nn.GRU: 3, nn.LSTM: 4}[type(module)]
        steps = inputs[0].shape[1] if module.batch_first else inputs[0].shape[0]
        directions = 2 if module.bidirectional else 1
        size, first = module.hidden_size, module.input_size
        per_layer = [(first if layer == 0 else size * directions) + size for layer in range(module.num_layers)]
        return 2 * gates * size * steps * directions * sum(per_layer)
    if isinstance(module, nn.MultiheadAttention):  # called as attention(query, key, value, ...)
        query = inputs[0] if inputs else output
        return _attention_flops(module, query, inputs[1] if len(inputs) > 1 else query)
    return 0


def _attention_flops(module: nn.MultiheadAttention, query: torch.Tensor, key: torch.Tensor) -> int:
    """Query, key and value projections, scores QKᵀ and their weighted sum of values (every head: L·S·E each),
    the output projection. Dense: the half a causal mask skips is not subtracted."""
    step_dim = 1 if module.batch_first else 0
    queries, keys = query.shape[step_dim], key.shape[step_dim]
    width = module.embed_dim
    projections = queries * width * width * 2 + keys * width * (module.kdim + module.vdim)
    return 2 * (projections + 2 * queries * keys * width)


def _human(count: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= scale:
            return f"{count / scale:.2f}{unit}"
    return str(count)
