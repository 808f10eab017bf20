"""Batched layers: one call computes a layer for every member of a stacked model.

An activation between layers (`Act`) is in one of three layouts, chosen so that no layer copies
more than it must:

- `SHARED` — `[B, ...]`: the same tensor for every member (the input batch, when all members see
  the same examples, and whatever parameter-free layers make of it);
- `MEMBER` — `[N, B, ...]`: member-major, what batched matrix products take (linear layers);
- `FOLDED` — `[B, N*C, H, W]`: the members' channels side by side, what a grouped convolution
  takes and gives; per-channel layers (batch norm, pooling, activations) work on it unchanged.

Each `stack_*` function takes the original (member 0's) module for its settings, the stacked
tensors of its parameters and buffers (`[N, *shape]`), and an activation; it returns the layer's
output for all members. `Unfusable` names what cannot be stacked, so the sweep runs that group
job by job instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

SHARED, MEMBER, FOLDED = "shared", "member", "folded"
# Parameter-free layers that act on each element (or each channel's map) alone: any layout will do.
ELEMENTWISE = (nn.ReLU, nn.Sigmoid, nn.Tanh, nn.LeakyReLU, nn.GELU, nn.ELU, nn.SiLU, nn.Softplus, nn.Identity,
               nn.ReLU6, nn.Hardtanh, nn.Mish, nn.CELU, nn.SELU, nn.Softsign)
POOLING = (nn.AvgPool2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


class Unfusable(Exception):
    """A group of jobs that cannot train as one stacked model; the message says why (one line)."""


@dataclass
class Act:
    """An activation of all members: `tensor` in `layout` (SHARED, MEMBER or FOLDED) for `members` members."""

    tensor: torch.Tensor
    layout: str
    members: int

    def member_major(self) -> torch.Tensor:
        """`[N, B, ...]` (a view where possible)."""
        if self.layout == MEMBER:
            return self.tensor
        if self.layout == SHARED:
            return self.tensor.expand(self.members, *self.tensor.shape)
        batch, channels = self.tensor.shape[:2]
        return self.tensor.view(batch, self.members, channels // self.members,
                                *self.tensor.shape[2:]).transpose(0, 1)

    def folded(self) -> torch.Tensor:
        """`[B, N*C, ...]`: the members' channels side by side."""
        if self.layout == FOLDED:
            return self.tensor
        members = self.member_major()
        return members.transpose(0, 1).reshape(members.shape[1], -1, *members.shape[3:])


def stack_linear(module: nn.Linear, tensors: dict[str, torch.Tensor], act: Act) -> Act:
    """y = x Wᵀ + b per member: one matrix product for a shared input (the members' weights side by
    side), a batched product for members' own inputs."""
    weight, bias = tensors["weight"], tensors.get("bias")
    members, outputs, inputs = weight.shape
    if act.layout == SHARED:
        flat = F.linear(act.tensor, weight.reshape(members * outputs, inputs),
                        bias.reshape(-1) if bias is not None else None)
        return Act(flat.unflatten(-1, (members, outputs)).movedim(-2, 0), MEMBER, members)
    if act.layout == FOLDED:
        raise Unfusable("a linear layer takes a convolution's feature maps without a Flatten before it")
    x = act.tensor
    rows = x.reshape(members, -1, inputs)
    if torch.is_autocast_enabled(x.device.type):  # mixed precision: autograd's own backward keeps the dtypes apart
        y = (torch.baddbmm(bias.unsqueeze(1), rows, weight.transpose(1, 2)) if bias is not None
             else torch.bmm(rows, weight.transpose(1, 2)))
    else:
        y = MemberLinear.apply(rows, weight, bias)
    return Act(y.view(*x.shape[:-1], outputs), MEMBER, members)


class MemberLinear(torch.autograd.Function):
    """Each member's linear layer on its own rows, `[N, B, in]` → `[N, B, out]`, as one batched product.

    The backward computes the weight gradient as a solo run's does (gradᵀ·x, not autograd's default
    xᵀ·grad for a batched product): the same floating-point sums, so a fused member's weights follow
    its solo run's to the last bit as far as the rest of the step allows.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        if bias is None:
            return torch.bmm(x, weight.transpose(1, 2))
        return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:
        x, weight = ctx.saved_tensors
        grad_x = torch.bmm(grad, weight) if ctx.needs_input_grad[0] else None
        grad_weight = torch.bmm(grad.transpose(1, 2), x) if ctx.needs_input_grad[1] else None
        grad_bias = grad.sum(dim=1) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias


def stack_conv2d(module: nn.Conv2d, tensors: dict[str, torch.Tensor], act: Act, channels_last: bool) -> Act:
    """A 2-D convolution per member: a wider convolution of a shared input, else a grouped one (one group
    per member and original group) over the members' channels side by side."""
    if module.padding_mode != "zeros":
        raise Unfusable(f"Conv2d with padding_mode={module.padding_mode!r}")
    weight, bias = tensors["weight"], tensors.get("bias")
    members = weight.shape[0]
    folded_weight = weight.reshape(-1, *weight.shape[2:])
    folded_bias = bias.reshape(-1) if bias is not None else None
    shared = act.layout == SHARED
    x = act.tensor if shared else act.folded()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    groups = module.groups if shared else module.groups * members
    y = F.conv2d(x, folded_weight, folded_bias, module.stride, module.padding, module.dilation, groups)
    return Act(y, FOLDED, members)


def stack_batch_norm(module: nn.modules.batchnorm._BatchNorm, tensors: dict[str, torch.Tensor], act: Act,
                     training: bool) -> Act:
    """Batch norm with every member's own statistics and running averages (its channels are its own)."""
    if module.momentum is None and module.track_running_stats:
        raise Unfusable(f"{type(module).__name__} with momentum=None (a cumulative average)")
    members = act.members
    use_batch_stats = training or not module.track_running_stats
    if training and module.track_running_stats:
        tensors["num_batches_tracked"].add_(1)
    running_mean, running_var = tensors.get("running_mean"), tensors.get("running_var")
    weight, bias = tensors.get("weight"), tensors.get("bias")

    def flat(tensor: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        return tensor.reshape(-1) if tensor is not None else None

    def normalize(x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, flat(running_mean), flat(running_var), flat(weight), flat(bias),
                            use_batch_stats, module.momentum or 0.0, module.eps)

    if isinstance(module, nn.BatchNorm2d):
        return Act(normalize(act.folded()), FOLDED, members)
    x = act.member_major()  # [N, B, C] or [N, B, C, L]
    y = normalize(x.transpose(0, 1).reshape(x.shape[1], -1, *x.shape[3:]))
    return Act(y.view(x.shape[1], members, *x.shape[2:]).transpose(0, 1), MEMBER, members)


def stack_dropout(rates: torch.Tensor, act: Act, training: bool, all_zero: bool) -> Act:
    """Dropout with each member's own rate (`rates`, [N]; 0 for a member without this site) and its own mask."""
    if not training or all_zero:
        return act
    members = act.members
    keep_scale = torch.where(rates < 1, 1 / (1 - rates), torch.zeros_like(rates))
    if act.layout == FOLDED:
        channels = act.tensor.shape[1] // members
        shape = (1, act.tensor.shape[1]) + (1,) * (act.tensor.dim() - 2)
        x, rate, scale = act.tensor, rates.repeat_interleave(channels).view(shape), \
            keep_scale.repeat_interleave(channels).view(shape)
    else:
        x = act.member_major()
        shape = (members,) + (1,) * (x.dim() - 1)
        rate, scale = rates.view(shape), keep_scale.view(shape)
    kept = torch.rand_like(x) >= rate
    return Act(x * kept * scale, act.layout if act.layout == FOLDED else MEMBER, members)


def stack_pooling(module: nn.Module, act: Act) -> Act:
    """Pooling acts on each channel's map: a shared input stays shared, members' maps go side by side."""
    if getattr(module, "return_indices", False):
        raise Unfusable(f"{type(module).__name__} with return_indices=True")
    if act.layout == SHARED:
        return Act(module(act.tensor), SHARED, act.members)
    return Act(module(act.folded()), FOLDED, act.members)


def stack_flatten(act: Act, start_dim: int = 1, end_dim: int = -1) -> Act:
    """Flatten every example (start_dim 1 to the end), keeping each member's features in order."""
    if (start_dim, end_dim) != (1, -1):
        raise Unfusable(f"Flatten(start_dim={start_dim}, end_dim={end_dim}) (only 1 to -1 is stacked)")
    if act.layout == SHARED:
        return Act(act.tensor.flatten(1), SHARED, act.members)
    if act.layout == MEMBER:
        return Act(act.tensor.flatten(2), MEMBER, act.members)
    batch = act.tensor.shape[0]
    return Act(act.tensor.reshape(batch, act.members, -1).transpose(0, 1), MEMBER, act.members)


def stack_cat(acts: list[Act], dim: int = 1) -> Act:
    """torch.cat along the channels or features (dim 1) of each member's examples: GoogLeNet's branches,
    DenseNet's growing feature maps. Each member's own channels stay together."""
    if dim != 1:
        raise Unfusable(f"torch.cat along dim {dim} (only along the channels, dim 1, is stacked)")
    members = acts[0].members
    if all(act.layout == SHARED for act in acts):
        return Act(torch.cat([act.tensor for act in acts], dim=1), SHARED, members)
    if any(act.layout == FOLDED for act in acts):
        parts = [act.folded() for act in acts]
        batch = parts[0].shape[0]
        joined = torch.cat([part.view(batch, members, -1, *part.shape[2:]) for part in parts], dim=2)
        return Act(joined.reshape(batch, -1, *joined.shape[3:]), FOLDED, members)
    return Act(torch.cat([act.member_major() for act in acts], dim=2), MEMBER, members)


def combine(first: Act, second: Act) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Two activations in one layout, for an elementwise operation between them (a residual sum)."""
    if first.layout == second.layout:
        return first.tensor, second.tensor, first.layout
    if FOLDED in (first.layout, second.layout):
        return first.folded(), second.folded(), FOLDED
    return first.member_major(), second.member_major(), MEMBER
