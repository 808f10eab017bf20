"""The members' optimizer steps as one update of the stacked tensors, for torch's SGD and Adam(W).

Each member keeps its own torch.optim optimizer (its parameter groups: learning rate, momentum,
betas, weight decay, which its scheduler changes), but instead of N `step()` calls, one update
per stacked tensor applies every member's hyperparameters at once, as `[N, 1, ...]` tensors. The
arithmetic is torch's single-tensor implementation's, operation for operation, in the forms that
round alike (`add(x, alpha=a)` ≡ `addcmul(x, y, a)`, `addcdiv(x, y, value=v)` ≡ `addcdiv(x, y·v)`),
so a member's weights stay bit for bit those of its own optimizer (tests/test_fused_engine.py).
The optimizer state lives in stacked tensors too, and each member's `optimizer.state` holds views
of its rows: its state dict, and so its checkpoint, is the solo format.

Options outside these paths (amsgrad, maximize, differentiable, capturable, momentum 0 next to
momentum > 0) and other optimizers step member by member (dlrun.engine.fused.optim).
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch

Key = tuple[float, ...]
Setting = Callable[[dict[str, Any], int], float]  # (member's parameter group, member index) → value


class StackedUpdate:
    """Shared bookkeeping: each stacked tensor's members' parameter groups, and their values as tensors."""

    def __init__(self, parameters: Sequence[torch.Tensor], members: Sequence[Sequence[torch.nn.Parameter]],
                 optimizers: Sequence[torch.optim.Optimizer]) -> None:
        self.parameters = list(parameters)
        self.members = [list(own) for own in members]  # members[i][k]: member i's view of stacked tensor k
        self.optimizers = list(optimizers)
        # groups[i][k]: the parameter group of member i's optimizer that holds its k-th parameter.
        self.groups = [[next(g for g in optimizer.param_groups if any(p is own for p in g["params"]))
                        for own in self.members[i]] for i, optimizer in enumerate(self.optimizers)]
        self._cache: dict[tuple[int, str], tuple[Key, torch.Tensor]] = {}

    def values(self, index: int, label: str, setting: Setting) -> torch.Tensor:
        """`[N, 1, ...]`: every member's `setting(group, member)` for stacked tensor `index`, computed in Python's
        double precision as torch.optim computes its scalars, then cast to the parameters' dtype as its kernels
        cast them. Made again only when a value changed (a scheduler's step)."""
        key = tuple(float(setting(self.groups[i][index], i)) for i in range(len(self.optimizers)))
        cached = self._cache.get((index, label))
        if cached is not None and cached[0] == key:
            return cached[1]
        parameter = self.parameters[index]
        values = torch.tensor(key, dtype=parameter.dtype)
        if parameter.is_cuda:  # from pinned memory, without waiting: a step-wise schedule costs no host sync
            values = values.pin_memory().to(parameter.device, non_blocking=True)
        tensor = values.view(-1, *[1] * (parameter.dim() - 1))
        self._cache[(index, label)] = (key, tensor)
        return tensor

    def _own_state(self, index: int, member: int) -> dict:
        return self.optimizers[member].state[self.members[member][index]]


class StackedSGD(StackedUpdate):
    """torch.optim.SGD (weight decay, momentum with dampening, Nesterov) for every member at once."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self.momentum = self.groups[0][0]["momentum"] != 0
        self.buffers: list[Optional[torch.Tensor]] = []
        for index, parameter in enumerate(self.parameters):
            owned = [self._own_state(index, i).get("momentum_buffer") for i in range(len(self.optimizers))]
            if not self.momentum:
                self.buffers.append(None)
                continue
            buffer = torch.zeros_like(parameter)
            for member, own in enumerate(owned):
                if own is not None:  # a resumed member: its checkpoint's buffer
                    buffer[member].copy_(own)
            self.buffers.append(buffer)
        self.started = [self._own_state(0, i).get("momentum_buffer") is not None for i in range(len(self.optimizers))]
        self._adopt()

    def _adopt(self) -> None:
        """Members' `momentum_buffer` states become views of the stacked buffers (once they have one)."""
        for index, buffer in enumerate(self.buffers):
            for member, started in enumerate(self.started):
                if buffer is not None and started:
                    self._own_state(index, member)["momentum_buffer"] = buffer[member]

    @torch.no_grad()
    def step(self, active: Sequence[bool]) -> None:
        first = [train and not started for train, started in zip(active, self.started)]
        for index, parameter in enumerate(self.parameters):
            # A member that no longer trains gets a step of 0: its weights stay as they are.
            lr = self.values(index, "-lr", lambda group, i: -group["lr"] if active[i] else 0.0)
            grad = torch.addcmul(parameter.grad, parameter, self.values(index, "wd", lambda group, i: group["weight_decay"]))
            buffer = self.buffers[index]
            if buffer is not None:
                momentum = self.values(index, "momentum", lambda group, i: group["momentum"])
                updated = buffer.mul(momentum).addcmul_(grad, self.values(index, "1-dampening",
                                                                          lambda group, i: 1 - group["dampening"]))
                # A member's first step starts its buffer at its gradient, as torch's does.
                fresh = torch.tensor(first, device=buffer.device).view(-1, *[1] * (buffer.dim() - 1))
                buffer.copy_(torch.where(fresh, grad, updated) if any(first) else updated)
                grad = torch.addcmul(grad, buffer, momentum) if self.groups[0][index]["nesterov"] else buffer
            parameter.addcmul_(grad, lr)
        if any(first):
            self.started = [started or now for started, now in zip(self.started, first)]
            self._adopt()


class StackedAdam(StackedUpdate):
    """torch.optim.Adam and AdamW (decoupled weight decay) for every member at once."""

    def __init__(self, *args: object, decoupled: bool) -> None:
        super().__init__(*args)
        self.decoupled = decoupled
        members = range(len(self.optimizers))
        states = [self._own_state(0, i) for i in members]
        self.counts = [int(state["step"]) if "step" in state else 0 for state in states]
        self.steps = torch.tensor(self.counts, dtype=torch.float32)  # the state's `step`: on the CPU, as torch keeps it
        self.averages, self.squares = [], []
        for index, parameter in enumerate(self.parameters):
            average, square = torch.zeros_like(parameter), torch.zeros_like(parameter)
            for member in members:
                own = self._own_state(index, member)
                if "exp_avg" in own:  # a resumed member: its checkpoint's moments
                    average[member].copy_(own["exp_avg"])
                    square[member].copy_(own["exp_avg_sq"])
                own.update(step=self.steps[member], exp_avg=average[member], exp_avg_sq=square[member])
            self.averages.append(average)
            self.squares.append(square)

    @torch.no_grad()
    def step(self, active: Sequence[bool]) -> None:
        self.counts = [count + 1 if train else count for count, train in zip(self.counts, active)]
        self.steps.add_(torch.tensor(active, dtype=torch.float32))
        counts = self.counts
        for index, parameter in enumerate(self.parameters):
            grad = parameter.grad
            if self.decoupled:
                parameter.mul_(self.values(index, "1-lr*wd", lambda group, i: 1 - group["lr"] * group["weight_decay"]
                                           if active[i] else 1.0))
            else:
                grad = torch.addcmul(grad, parameter, self.values(index, "wd", lambda group, i: group["weight_decay"]))
            self.averages[index].lerp_(grad, self.values(index, "1-beta1", lambda group, i: 1 - group["betas"][0]))
            square = self.squares[index]
            square.mul_(self.values(index, "beta2", lambda group, i: group["betas"][1]))
            square.addcmul_(grad * self.values(index, "1-beta2", lambda group, i: 1 - group["betas"][1]), grad)
            # The bias corrections of each member's own step count (counted only while it trains).
            correction = self.values(index, "sqrt(1-beta2^t)",
                                     lambda group, i: (1 - group["betas"][1] ** max(counts[i], 1)) ** 0.5)
            denominator = (square.sqrt() / correction).add_(self.values(index, "eps", lambda group, i: group["eps"]))
            step_size = self.values(index, "-lr/(1-beta1^t)", lambda group, i: -group["lr"] / (
                1 - group["betas"][0] ** max(counts[i], 1)) if active[i] else 0.0)
            parameter.addcdiv_(self.averages[index] * step_size, denominator)


def stacked_update(parameters: Sequence[torch.Tensor], members: Sequence[Sequence[torch.nn.Parameter]],
                   optimizers: Sequence[torch.optim.Optimizer]) -> Optional[StackedUpdate]:
    """The stacked update for these members' optimizers, or None when they step one by one."""
    kinds = {type(optimizer) for optimizer in optimizers}
    if len(kinds) != 1:
        return None
    kind = kinds.pop()
    groups = [group for optimizer in optimizers for group in optimizer.param_groups]
    if any(group.get("maximize") or group.get("differentiable") or group.get("capturable") for group in groups):
        return None
    if kind is torch.optim.SGD:
        if len({group["momentum"] != 0 for group in groups}) == 1 and len({group["nesterov"] for group in groups}) == 1:
            return StackedSGD(parameters, members, optimizers)
    elif kind in (torch.optim.Adam, torch.optim.AdamW) and not any(group.get("amsgrad") for group in groups):
        decoupled = kind is torch.optim.AdamW or any(group.get("decoupled_weight_decay") for group in groups)
        return StackedAdam(parameters, members, optimizers, decoupled=decoupled)
    return None
