"""dlrun's MLP, failing on purpose in one process of a distributed run: a fault on one rank.

`model.fail_at=<n>` (0: never) makes the process of rank `model.fail_rank` (torchrun's RANK)
raise a RuntimeError in its n-th training forward pass; otherwise it is the plain MLP.
"""

from __future__ import annotations

import os

from dlrun.models.mlp import MLP


class FailingMLP(MLP):
    def __init__(self, *args, fail_at: int = 0, fail_rank: int = 1, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fails_at = fail_at if str(fail_rank) == os.environ.get("RANK") else 0
        self.forwards = 0

    def forward(self, x):
        if self.training:
            self.forwards += 1
            if self.forwards == self.fails_at:
                raise RuntimeError(f"rank {os.environ['RANK']} fails on purpose at forward {self.forwards}")
        return super().forward(x)
