"""Sharing out global batches over processes (dlrun.data.shard), in-process: parts, loss scales, loaders."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dlrun.data.files import _Batches
from dlrun.data.loader import TensorLoader
from dlrun.data.shard import Shard
from dlrun.data.splits import TensorSplit


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_the_parts_of_a_batch_cover_it_in_order_and_differ_by_one_example_at_most(world):
    for size in range(0, 10):
        parts = [Shard(rank, world).part(5, 5 + size) for rank in range(world)]
        assert [index for lo, hi in parts for index in range(lo, hi)] == list(range(5, 5 + size))
        sizes = [hi - lo for lo, hi in parts]
        assert sizes == sorted(sizes, reverse=True) and sizes[0] - sizes[-1] <= 1
        assert size == 0 or sizes[0] >= 1  # rank 0 is never the one left without an example


@pytest.mark.parametrize("world", [2, 3, 4])
def test_scaled_part_losses_give_ddp_the_one_process_gradient_and_loss(world):
    torch.manual_seed(0)
    weight = torch.randn(3, 5)
    for size in range(1, 10):
        inputs, targets = torch.randn(size, 5), torch.randint(0, 3, (size,))
        one = weight.clone().requires_grad_()
        full_loss = F.cross_entropy(inputs @ one.T, targets)
        full_loss.backward()
        gradients, recorded = [], []
        for rank in range(world):
            shard = Shard(rank, world, placeholder=True)
            lo, hi = shard.part(0, size)
            if lo == hi:  # the placeholder: the batch's first example, counting zero
                lo, hi = 0, 1
            part = weight.clone().requires_grad_()
            loss = F.cross_entropy(inputs[lo:hi] @ part.T, targets[lo:hi]) * shard.loss_scale(size)
            loss.backward()
            gradients.append(part.grad)
            recorded.append(loss.detach())
        torch.testing.assert_close(torch.stack(gradients).mean(0), one.grad)  # what DDP's average gives
        torch.testing.assert_close(torch.stack(recorded).mean(), full_loss.detach())  # Ranks.totals' step loss


def test_one_process_scales_nothing():
    assert [Shard().loss_scale(size) for size in (1, 7, 64)] == [1.0, 1.0, 1.0]


def shuffled(examples: int, batch: int, shard: Shard = Shard()) -> TensorLoader:
    split = TensorSplit(torch.arange(examples).float().unsqueeze(1), torch.arange(examples))
    return TensorLoader(split, batch, shuffle=True, generator=torch.Generator().manual_seed(3), shard=shard)


def test_each_process_takes_its_part_of_the_same_global_batches_of_the_same_permutation():
    one = list(shuffled(11, 4))
    two = [list(shuffled(11, 4, Shard(rank, 2, placeholder=True))) for rank in range(2)]
    assert [len(batches) for batches in two] == [3, 3]
    for batch, (first, second) in zip(one, zip(*two)):
        assert torch.equal(torch.cat([first[1], second[1]]), batch[1])
    assert [len(first[1]) for first, _ in zip(*two)] == [2, 2, 2]  # the last global batch of 3: 2 + 1
    assert [shuffled(11, 4, Shard(rank, 2)).loss_scale(2) for rank in range(2)] == [4 / 3, 2 / 3]


def test_a_process_left_without_an_example_trains_on_a_placeholder_and_skips_it_in_evaluation():
    one = list(shuffled(9, 4))
    training = list(shuffled(9, 4, Shard(1, 2, placeholder=True)))
    assert len(training) == 3 and torch.equal(training[2][1], one[2][1])  # the batch's one example, again
    assert shuffled(9, 4, Shard(1, 2)).loss_scale(2) == 0.0
    evaluation = TensorLoader(TensorSplit(torch.zeros(9, 1), torch.arange(9)), 4, shard=Shard(1, 2))
    assert [batch[1].tolist() for batch in evaluation] == [[2, 3], [6, 7]]


def test_streams_of_sequential_sampling_are_shared_out_by_process():
    split = TensorSplit(torch.arange(24), torch.arange(24))
    one = list(TensorLoader(split, 4, streams=True))
    parts = [list(TensorLoader(split, 4, streams=True, shard=Shard(rank, 2))) for rank in range(2)]
    for batch, (first, second) in zip(one, zip(*parts)):
        assert torch.equal(torch.cat([first[0], second[0]]), batch[0])


def test_streamed_files_are_shared_out_like_tensors():
    order = torch.randperm(9, generator=torch.Generator().manual_seed(1))
    batches = {}
    for rank in range(2):
        for training in (True, False):
            sampler = _Batches(9, 4, 3, seeded=False, shard=Shard(rank, 2, placeholder=training))
            sampler.set_pass(order, 0)
            batches[rank, training] = list(sampler)
    whole = order.tolist()
    assert batches[0, True] == [whole[0:2], whole[4:6], whole[8:9]]
    assert batches[1, True] == [whole[2:4], whole[6:8], whole[8:9]]  # a placeholder in the last one
    assert batches[1, False] == [whole[2:4], whole[6:8]]
