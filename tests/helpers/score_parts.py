"""A process of a two-process evaluation pass of a Binary task, for tests (torch.multiprocessing.spawn imports this
light module, not the test file)."""

from __future__ import annotations

import torch
import torch.distributed as dist


def score_part(rank: int, init_file: str, scores: torch.Tensor, targets: torch.Tensor, out: str) -> None:
    """Scores every other example (as a shard's rows) and writes the metrics the task computes for the whole pass."""
    from dlrun.tasks import Binary

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    task = Binary()
    task.start_pass(training=False)
    half = slice(rank, None, 2)
    logits, truth = scores[half, None], targets[half]
    stats = task.batch_stats(logits, truth, task.loss(logits, truth))
    dist.all_reduce(stats)  # what Ranks.sum_over does with a pass's sums
    torch.save(task.metrics(stats.tolist()), f"{out}.{rank}")
    dist.destroy_process_group()
