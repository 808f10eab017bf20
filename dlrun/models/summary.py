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
    """Run `example` (batch of 1) through `model` in eval mode and record every leaf layer."""
    rows: list[LayerRow] = []
    hooks = []

    def record(name: str):
        def hook(module: nn.Module, inputs, output) -> None:
            out = output[0] if isinstance(output, tuple) else output
            params = sum(p.numel() for p in module.parameters(recurse=False))
            if not isinstance(out, torch.Tensor):  # e.g. a detector's image-list or anchor layers
                rows.append(LayerRow(name, type(module).__name__, (), params, 0))
                return
            rows.append(LayerRow(name, type(module).__name__, tuple(out.shape[1:]), params,
                                 _layer_flops(module, inputs[0], out)))
        return hook

    for name, module in model.named_modules():
        if not list(module.children()):
            hooks.append(module.register_forward_hook(record(name)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example)
    finally:
        model.train(was_training)
        for handle in hooks:
            handle.remove()
    total = sum(p.numel() for p in model.parameters())
    return ModelSummary(rows, total, sum(row.flops for row in rows))


def _layer_flops(module: nn.Module, inputs: torch.Tensor, output: torch.Tensor) -> int:
    """FLOPs of the layers that dominate compute; elementwise layers count as free."""
    per_example = output[0].numel() if output.dim() > 0 else 0
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        kernel = module.weight[0].numel()  # in_channels / groups x kernel area
        return 2 * per_example * kernel
    if isinstance(module, nn.Linear):
        return 2 * per_example * module.in_features
    if isinstance(module, (nn.RNN, nn.GRU, nn.LSTM)):
        gates = {nn.RNN: 1, nn.GRU: 3, nn.LSTM: 4}[type(module)]
        steps = inputs.shape[1] if module.batch_first else inputs.shape[0]
        directions = 2 if module.bidirectional else 1
        size, first = module.hidden_size, module.input_size
        per_layer = [(first if layer == 0 else size * directions) + size for layer in range(module.num_layers)]
        return 2 * gates * size * steps * directions * sum(per_layer)
    return 0


def _human(count: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= scale:
            return f"{count / scale:.2f}{unit}"
    return str(count)
