"""This process's share of every global batch when one run trains on several processes (DDP).

`trainer.batch_size` stays the global batch: every process draws the same global order (the
same permutation of the shuffle generator), cuts the same global batches from it, and takes
its own contiguous part of each, the first `size % world` processes one example more. With
one process the part is the whole batch, so nothing changes.

A training batch too small to give every process an example (a last batch of 3 examples on
4 processes) hands the processes left without one a placeholder: the batch's first example,
whose loss counts zero. Every process must run forward and backward at every step, or the
gradient all-reduce of the others would wait for it forever. Evaluation has no such
collective, so an empty part is simply skipped there.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Shard:
    """Process `rank` of `world`; `placeholder`: give an empty part the batch's first example (training)."""

    rank: int = 0
    world: int = 1
    placeholder: bool = False

    def part(self, start: int, stop: int) -> tuple[int, int]:
        """The bounds of this process's part of the global batch [start, stop) (empty when lo == hi)."""
        size = stop - start
        quotient, remainder = divmod(size, self.world)
        lo = start + self.rank * quotient + min(self.rank, remainder)
        hi = lo + quotient + (1 if self.rank < remainder else 0)
        return lo, hi

    def loss_scale(self, size: int) -> float:
        """Factor for this process's mean loss over its part of a global batch of `size` examples.

        DDP averages the processes' gradients; the one-process gradient of the batch's mean loss is
        the average of the parts' mean-loss gradients weighted by part size. Scaling each part's
        loss by world × part / size makes DDP's plain average equal to it: 1 for equal parts (every
        full batch), 0 for a placeholder.
        """
        lo, hi = self.part(0, size)
        return self.world * (hi - lo) / size if size else 0.0
