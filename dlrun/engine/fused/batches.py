"""Every member's batch at once, cut from the members' device-resident splits.

Members with the same `seed` draw the same validation split and the same shuffle order, so they
share one copy of each split (dlrun.run.fused_train hands them the same split object); members
with other seeds have their own. `MemberSplits` holds one split of every member: one tensor when
all share it, else the distinct copies end to end, so that a batch of every member is one gather
(`index_select` of N x B rows) from device memory. When every member also draws the same order,
a batch is shared: one `[B, ...]` tensor that the stacked model's first layer takes for all members.
"""

from __future__ import annotations

from typing import Iterator, Optional

import torch

from dlrun.data.loader import TensorLoader
from dlrun.engine.fused.layers import MEMBER, SHARED, Act

Batch = tuple[Act, torch.Tensor]  # inputs of all members, and targets ([B, ...] shared or [N, B, ...])


class MemberSplits:
    """One split (train, val or test) of every member: `loaders[i]` is member i's own loader over it."""

    def __init__(self, loaders: list[TensorLoader]) -> None:
        self.loaders = loaders
        distinct: dict[int, int] = {}
        self.source_of = [distinct.setdefault(id(loader.split), len(distinct)) for loader in loaders]
        splits = list({id(loader.split): loader.split for loader in loaders}.values())
        self.examples = len(splits[0])
        self.one_copy = len(splits) == 1
        self.inputs = splits[0].inputs if self.one_copy else torch.cat([split.inputs for split in splits])
        self.targets = splits[0].targets if self.one_copy else torch.cat([split.targets for split in splits])
        device = self.inputs.device
        # Row offset of each member's copy in the concatenated tensors.
        self.offsets = torch.tensor(self.source_of, device=device).mul_(self.examples).unsqueeze(1)
        first = loaders[0]
        self.batch_size, self.transform = first.batch_size, first.transform

    @property
    def members(self) -> int:
        return len(self.loaders)

    def __len__(self) -> int:
        return len(self.loaders[0])

    @property
    def num_examples(self) -> int:
        return self.loaders[0].num_examples

    def epoch_orders(self) -> list[Optional[torch.Tensor]]:
        """Each member's order for an epoch, drawn from its own loader (and shuffling generator)."""
        return [loader.epoch_order() for loader in self.loaders]

    def shares_order(self, orders: list[Optional[torch.Tensor]]) -> bool:
        """Whether every member sees the same batches: one copy of the data and one order (one host sync)."""
        if not self.one_copy:
            return False
        first = orders[0]
        return all((o is None and first is None) or (o is not None and first is not None and torch.equal(o, first))
                   for o in orders)

    def batches(self, orders: list[Optional[torch.Tensor]], start: int = 0) -> Iterator[Batch]:
        """The batches of a pass in the members' `orders`, from batch number `start`."""
        device = self.offsets.device
        orders = [order.to(device) if order is not None else None for order in orders]
        shared = self.shares_order(orders)
        stacked_orders = None
        if not shared:
            stacked_orders = torch.stack([o if o is not None else torch.arange(self.examples, device=device)
                                          for o in orders]) + self.offsets
        for batch in range(start, len(self)):
            low = batch * self.batch_size
            high = min(low + self.batch_size, self.examples)
            if shared:
                yield self._shared_batch(orders[0], low, high)
            else:
                yield self._member_batch(stacked_orders[:, low:high])

    def _shared_batch(self, order: Optional[torch.Tensor], low: int, high: int) -> Batch:
        if order is None:
            inputs, targets = self.inputs[low:high], self.targets[low:high]
        else:
            index = order[low:high]
            inputs, targets = self.inputs.index_select(0, index), self.targets.index_select(0, index)
        if self.transform is not None:
            inputs = self.transform(inputs)
        return Act(inputs, SHARED, self.members), targets

    def _member_batch(self, index: torch.Tensor) -> Batch:
        flat = index.reshape(-1)
        inputs, targets = self.inputs.index_select(0, flat), self.targets.index_select(0, flat)
        if self.transform is not None:  # augmentation draws per example: each member's examples their own
            inputs = self.transform(inputs)
        return (Act(inputs.view(*index.shape, *inputs.shape[1:]), MEMBER, self.members),
                targets.view(*index.shape, *targets.shape[1:]))

    def example_input(self) -> torch.Tensor:
        return self.loaders[0].example_input()
