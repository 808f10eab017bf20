"""N copies of one network as one model of batched layers, whose parameters the copies then share.

`StackedModel.build` traces one member with torch.fx (the member with the most dropout sites: a
member whose rate is 0 has none there), lines every member's layers up with its layers, and stacks
each parameter and buffer of the members into one tensor `[N, *shape]`. Its forward runs the
traced graph with the batched layers of dlrun.engine.fused.layers: one call per layer for all
members. `bind_members` then makes every member's own parameters and buffers views of the stacked
tensors, so the members' modules, optimizers, state dicts, checkpoints and evaluation hooks see the
stacked training as their own. `verify` checks that the stacked forward gives every member's own
outputs before a group is trusted to it.

Layers it stacks: Linear, Conv2d (zero padding), BatchNorm1d/2d, Dropout (each member its own rate),
Flatten, the pooling layers, elementwise activations, residual sums and concatenations along the
channels: the curriculum's MLPs, LeNet, AlexNet, VGG, NiN, GoogLeNet, ResNet and DenseNet. Anything
else (recurrent layers, attention, a forward that reshapes by hand) raises `Unfusable` and the sweep
runs that group job by job.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from dlrun.engine.fused.layers import (ELEMENTWISE, POOLING, SHARED, Act, Unfusable, combine, stack_batch_norm,
                                       stack_cat, stack_conv2d, stack_dropout, stack_flatten, stack_linear,
                                       stack_pooling)

ELEMENTWISE_FUNCTIONS = (torch.relu, torch.sigmoid, torch.tanh, F.relu, F.gelu, F.silu, F.leaky_relu, torch.sigmoid)
ELEMENTWISE_METHODS = ("relu", "sigmoid", "tanh")
SUMS = (operator.add, operator.iadd, torch.add)


@dataclass
class StackedLayer:
    """One layer of the traced member: its settings (`module`, the traced member's), the stacked tensors of
    its parameters and buffers, and for each member the member's own module at that place (None: a
    dropout site the member does not have)."""

    module: nn.Module
    members: list[Optional[nn.Module]]
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    dropout_rates: Optional[torch.Tensor] = None
    no_dropout: bool = True


class StackedModel:
    """The members of a group as one model: `forward(Act)` → `[N, B, ...]` outputs, one row per member."""

    def __init__(self, graph: fx.Graph, layers: dict[str, StackedLayer], members: int, channels_last: bool) -> None:
        self.graph = graph
        self.layers = layers
        self.members = members
        self.channels_last = channels_last
        self.training = True

    @classmethod
    def build(cls, models: list[nn.Module], channels_last: bool = False) -> "StackedModel":
        """Stack `models` (copies of one architecture); raise Unfusable when they cannot be stacked."""
        traced_index = max(range(len(models)), key=lambda i: _count(models[i], nn.Dropout))
        traced = models[traced_index]
        try:
            graph = fx.Tracer().trace(traced)
        except Exception as error:  # fx's own message says which Python construct it could not follow
            raise Unfusable(f"{type(traced).__name__} cannot be traced by torch.fx "
                            f"({type(error).__name__}: {str(error).splitlines()[0]})") from None
        leaves = _leaves(traced)
        _check_nodes(graph, traced, leaves)
        aligned = [_align(leaves, _leaves(model), type(traced).__name__) for model in models]
        layers = {path: StackedLayer(module, [alignment[path] for alignment in aligned])
                  for path, module in leaves.items()}
        in_layers = {id(p) for module in leaves.values() for p in module.parameters(recurse=False)}
        if any(id(p) not in in_layers for p in traced.parameters()):
            raise Unfusable(f"{type(traced).__name__} has parameters outside its layers, which fused sweeps do not stack")
        parameter = next(traced.parameters(), None)
        if parameter is None:
            raise Unfusable(f"{type(traced).__name__} has no parameters to train")
        stacked = cls(graph, layers, len(models), channels_last)
        stacked._allocate(parameter.device)
        return stacked

    # The stacked tensors -------------------------------------------------------------------------------

    def _allocate(self, device: torch.device) -> None:
        for layer in self.layers.values():
            present = [m for m in layer.members if m is not None]
            names = [n for n, p in layer.module.named_parameters(recurse=False) if p is not None]
            names += [n for n, b in layer.module.named_buffers(recurse=False) if b is not None]
            for name in names:
                shapes = {tuple(getattr(m, name).shape) for m in present}
                if len(shapes) != 1:
                    raise Unfusable(f"the members' {name} of {type(layer.module).__name__} differ in shape: {shapes}")
                template = getattr(layer.module, name)
                tensor = _empty_stacked(template, self.members, self.channels_last and template.dim() == 4)
                if isinstance(template, nn.Parameter):
                    tensor.requires_grad_(template.requires_grad)
                layer.tensors[name] = tensor
            if isinstance(layer.module, nn.Dropout):
                rates = [m.p if m is not None else 0.0 for m in layer.members]
                layer.dropout_rates = torch.tensor(rates, dtype=torch.float32, device=device)
                layer.no_dropout = not any(rates)
        self.load_from_members()

    @torch.no_grad()
    def load_from_members(self) -> None:
        """Copy every member's current parameters and buffers into the stacked tensors."""
        for layer in self.layers.values():
            for name, tensor in layer.tensors.items():
                for index, module in enumerate(layer.members):
                    tensor[index].copy_(getattr(module, name))

    def bind_members(self) -> None:
        """Make each member's parameters and buffers views of the stacked tensors: from here on the
        members' modules (their state dicts, optimizers, evaluation hooks) read and write the stacked weights."""
        for layer in self.layers.values():
            for name, tensor in layer.tensors.items():
                for index, module in enumerate(layer.members):
                    if name in module._parameters:  # the same Parameter object (its optimizer holds it), new storage
                        module._parameters[name].data = tensor.detach()[index]
                    else:
                        module._buffers[name] = tensor[index]

    def parameters(self) -> list[torch.Tensor]:
        """The stacked trainable tensors, in a fixed order."""
        return [t for layer in self.layers.values() for t in layer.tensors.values() if t.requires_grad]

    def member_parameters(self, index: int) -> list[nn.Parameter]:
        """Member `index`'s own parameters in the order of `parameters()` (views once bound)."""
        return [layer.members[index]._parameters[name] for layer in self.layers.values()
                for name, t in layer.tensors.items() if t.requires_grad]

    def train(self, mode: bool = True) -> "StackedModel":
        self.training = mode
        return self

    def eval(self) -> "StackedModel":
        return self.train(False)

    # The forward pass ---------------------------------------------------------------------------------

    def __call__(self, inputs: Act) -> torch.Tensor:
        """Every member's outputs, `[N, B, ...]`."""
        values: dict[fx.Node, Any] = {}
        for node in self.graph.nodes:
            if node.op == "placeholder":
                values[node] = inputs
            elif node.op == "output":
                result = values[node.args[0]]
                return result.member_major()
            else:
                args = fx.node.map_arg(node.args, lambda n: values[n])
                kwargs = fx.node.map_arg(node.kwargs, lambda n: values[n])
                values[node] = self._apply(node, args, kwargs)
        raise Unfusable("the traced model has no output")

    def _apply(self, node: fx.Node, args: tuple, kwargs: dict) -> Act:
        if node.op == "call_module":
            return self._layer(self.layers[node.target], args[0])
        if node.op == "call_function" and node.target in SUMS:
            first, second, layout = combine(*args[:2])
            return Act(first + second, layout, self.members)
        if node.op == "call_function" and node.target is torch.flatten:
            return stack_flatten(args[0], *args[1:], **kwargs)
        if node.op == "call_function" and node.target is torch.cat:
            return stack_cat(list(args[0]), *args[1:], **kwargs)
        if node.op == "call_function" and node.target in ELEMENTWISE_FUNCTIONS:
            return _elementwise(lambda x: node.target(x, *args[1:], **kwargs), args[0])
        if node.op == "call_method" and node.target == "flatten":
            return stack_flatten(args[0], *args[1:], **kwargs)
        method: Callable[[torch.Tensor], torch.Tensor] = lambda x: getattr(x, node.target)(*args[1:], **kwargs)
        return _elementwise(method, args[0])  # _check_nodes let only the elementwise methods through

    def _layer(self, layer: StackedLayer, act: Act) -> Act:
        module = layer.module
        if isinstance(module, nn.Linear):
            return stack_linear(module, layer.tensors, act)
        if isinstance(module, nn.Conv2d):
            return stack_conv2d(module, layer.tensors, act, self.channels_last)
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            return stack_batch_norm(module, layer.tensors, act, self.training)
        if isinstance(module, nn.Dropout):
            return stack_dropout(layer.dropout_rates, act, self.training, layer.no_dropout)
        if isinstance(module, nn.Flatten):
            return stack_flatten(act, module.start_dim, module.end_dim)
        if isinstance(module, POOLING):
            return stack_pooling(module, act)
        return _elementwise(module, act)

    @torch.no_grad()
    def verify(self, models: list[nn.Module], example: torch.Tensor, tolerance: float = 1e-4) -> None:
        """Raise Unfusable unless the stacked forward gives each member's own outputs for `example` (eval mode)."""
        modes, own_mode = [model.training for model in models], self.training
        try:
            for model in models:
                model.eval()
            stacked = self.eval()(Act(example, SHARED, self.members))
            for index, model in enumerate(models):
                own = model(example)
                if stacked[index].shape != own.shape or not torch.allclose(stacked[index].float(), own.float(),
                                                                           rtol=tolerance, atol=tolerance):
                    raise Unfusable(f"the stacked {type(model).__name__} does not reproduce member {index}'s outputs")
        except Unfusable:
            raise
        except Exception as error:
            raise Unfusable(f"the stacked model fails on an example batch ({type(error).__name__}: "
                            f"{str(error).splitlines()[0]})") from None
        finally:
            self.train(own_mode)
            for model, mode in zip(models, modes):
                model.train(mode)


def _elementwise(function: Callable[[torch.Tensor], torch.Tensor], act: Act) -> Act:
    return Act(function(act.tensor), act.layout, act.members)


def _empty_stacked(template: torch.Tensor, members: int, channels_last: bool) -> torch.Tensor:
    """`[N, *shape]`; a 4-D weight with channels_last gets strides that make its `[N*C_out, C_in, k, k]`
    view channels_last, the layout the CPU's and tensor cores' convolutions are fastest with."""
    shape = (members, *template.shape)
    if not channels_last:
        return torch.empty(shape, dtype=template.dtype, device=template.device)
    out_channels, in_channels, height, width = template.shape
    block = out_channels * in_channels * height * width
    strides = (block, in_channels * height * width, 1, width * in_channels, in_channels)
    return torch.empty_strided(shape, strides, dtype=template.dtype, device=template.device)


def _count(model: nn.Module, kind: type) -> int:
    return sum(isinstance(module, kind) for module in model.modules())


def _leaves(model: nn.Module) -> dict[str, nn.Module]:
    """The modules without children, by path, in registration order."""
    return {name: module for name, module in model.named_modules() if not list(module.children())}


SUPPORTED = (nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.Dropout, nn.Flatten, *POOLING, *ELEMENTWISE)


def _align(traced: dict[str, nn.Module], member: dict[str, nn.Module], name: str) -> dict[str, Optional[nn.Module]]:
    """For each of the traced model's layers, the member's layer in its place (None: a dropout site it lacks)."""
    aligned: dict[str, Optional[nn.Module]] = {}
    others = list(member.values())
    position = 0
    for path, module in traced.items():
        if type(module) not in SUPPORTED:
            raise Unfusable(f"{name} has a {type(module).__name__} layer ({path}), which fused sweeps do not stack")
        candidate = others[position] if position < len(others) else None
        if candidate is not None and type(candidate) is type(module) and _same_settings(candidate, module):
            aligned[path] = candidate
            position += 1
        elif isinstance(module, nn.Dropout):
            aligned[path] = None
        else:
            raise Unfusable(f"the members' {name} models differ in their layers (at {path})")
    if position != len(others):
        raise Unfusable(f"the members' {name} models differ in their layers")
    return aligned


def _same_settings(first: nn.Module, second: nn.Module) -> bool:
    """Same layer settings; dropout rates may differ (each member keeps its own)."""
    return isinstance(first, nn.Dropout) or first.extra_repr() == second.extra_repr()


def _check_nodes(graph: fx.Graph, model: nn.Module, leaves: dict[str, nn.Module]) -> None:
    """Every operation of the traced forward is one the stacked forward knows."""
    for node in graph.nodes:
        if node.op == "call_module" and node.target not in leaves:
            raise Unfusable(f"{type(model).__name__} has a {type(model.get_submodule(node.target)).__name__} layer "
                            f"({node.target}), which fused sweeps do not stack")
        known = (node.op in ("placeholder", "output", "call_module")
                 or (node.op == "call_function" and (node.target in SUMS or node.target in (torch.flatten, torch.cat)
                                                     or node.target in ELEMENTWISE_FUNCTIONS))
                 or (node.op == "call_method" and node.target in (*ELEMENTWISE_METHODS, "flatten")))
        if not known:
            what = getattr(node.target, "__name__", str(node.target))
            raise Unfusable(f"{type(model).__name__}'s forward calls {what}, which fused sweeps do not stack")
        if node.op == "placeholder" and node is not next(iter(graph.nodes)):
            raise Unfusable(f"{type(model).__name__}'s forward takes more than one input")
