"""Fused training's engine, in this process: stacked members train as their solo runs do (to float32
round-off), each with its own dropout rate and batch-norm statistics; what cannot be stacked says why;
which sweep jobs share a group."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_module
from torch import nn

from conftest import compose_config
from dlrun.config import validate
from dlrun.engine.fused.batches import MemberSplits
from dlrun.engine.fused.layers import MEMBER, SHARED, Act, Unfusable, stack_dropout
from dlrun.engine.fused.loop import FusedTrainer, GroupPosition, evaluate_members, train_fused_epoch
from dlrun.engine.fused.objectives import MemberObjective, member_penalty
from dlrun.engine.fused.optim import MemberSteps
from dlrun.engine.fused.stacking import StackedModel
from dlrun.engine.loop import evaluate, train_one_epoch
from dlrun.engine.position import EpochPosition
from dlrun.engine.setup import build_training
from dlrun.models.lenet import LeNet
from dlrun.models.mlp import MLP
from dlrun.run.fused_groups import group_key, solo_reason

EPOCHS = 12  # 21 steps each on the digits: 252 steps
TINY_MLP = ("model=mlp", "model.hidden=[32]", f"trainer.epochs={EPOCHS}", "device=cpu", "device.compile=false",
            "device.num_threads=1")  # solo and fused alike on one thread (auto would choose by the load)


@pytest.fixture
def one_thread():
    """Solo and fused runs compared on one thread: the same arithmetic, none of a thread pool's scheduling."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def train_solo(cfg, epochs: int = EPOCHS):
    training = build_training(cfg, epochs)
    step = 0
    for epoch in range(1, epochs + 1):
        position = EpochPosition.start(epoch, training.data.train, step, training.device)
        train_one_epoch(training.trainer, training.data.train, position)
        step = position.global_step
    return training


def train_fused(cfgs, epochs: int = EPOCHS):
    members = [build_training(cfg, epochs) for cfg in cfgs]
    stacked = StackedModel.build([m.model for m in members])
    stacked.bind_members()
    steps = MemberSteps(stacked, [m.trainer.optimizer for m in members], [m.trainer.grad_clip for m in members])
    trainer = FusedTrainer(stacked, MemberObjective([m.trainer.task for m in members]), steps,
                           members[0].trainer.precision, [None] * len(members), [True] * len(members),
                           penalty=member_penalty(stacked, [cfg.regularization.l1 for cfg in cfgs], False))
    splits = MemberSplits([m.data.train for m in members])  # each member its own copy: the gathered path
    step = 0
    for epoch in range(1, epochs + 1):
        position = GroupPosition.start(epoch, splits, step, torch.device("cpu"))
        train_fused_epoch(trainer, splits, position)
        step = position.global_step
    assert step == epochs * len(members[0].data.train)  # 21 steps an epoch on the digits
    return members, steps, trainer


@pytest.mark.parametrize("optimizer, stacked_update", [("momentum", "StackedSGD"), ("adamw", "StackedAdam"),
                                                       ("rmsprop", None)])
def test_members_weights_and_optimizer_states_equal_their_solo_runs(optimizer, stacked_update, one_thread):
    """No dropout: after 252 steps each member's weights equal its solo run's to 1e-5 (relative), whether its
    optimizer steps in the stacked update (SGD, AdamW) or on its own (RMSprop); with its own learning rate,
    weight decay, L1, label smoothing, gradient clipping and seed."""
    members = [("optimizer.lr=0.01", "regularization.weight_decay=0"),
               ("optimizer.lr=0.03", "regularization.weight_decay=1e-3", "regularization.label_smoothing=0.1"),
               ("optimizer.lr=0.02", "regularization.l1=1e-4", "regularization.grad_clip=0.5", "seed=1"),
               ("optimizer.lr=0.005", "regularization.weight_decay=1e-2", "seed=1")]
    cfgs = [validate(compose_config(*TINY_MLP, f"optimizer={optimizer}", *own)) for own in members]
    fused, steps, _ = train_fused(cfgs)
    assert type(steps.update).__name__ == stacked_update if stacked_update else steps.update is None
    for cfg, member in zip(cfgs, fused):
        solo = train_solo(cfg)
        for name, expected in solo.model.state_dict().items():
            got = member.model.state_dict()[name]
            assert (got - expected).norm() <= 1e-5 * expected.norm(), (cfg.optimizer.lr, name)
        solo_state = solo.trainer.optimizer.state_dict()["state"]
        fused_state = member.trainer.optimizer.state_dict()["state"]
        assert solo_state.keys() == fused_state.keys()
        for index, values in solo_state.items():
            for key, expected in values.items():
                assert torch.allclose(torch.as_tensor(fused_state[index][key]), torch.as_tensor(expected),
                                      rtol=1e-5, atol=1e-7), (index, key)


def test_regression_members_keep_their_own_target_scale_and_equal_their_solo_runs(one_thread):
    """Diabetes, standardised targets: seeds 0 and 1 split the rows differently, so each member's targets have
    their own mean and spread; each member's weights and validation metrics (in the target's units) are its
    solo run's."""
    members = [("optimizer.lr=0.01",), ("optimizer.lr=0.03", "seed=1"), ("optimizer.lr=0.02", "seed=1")]
    cfgs = [validate(compose_config("dataset=diabetes", "model=mlp", "model.hidden=[16]", "optimizer=sgd",
                                    "trainer.epochs=4", "device=cpu", "device.compile=false", *own))
            for own in members]
    fused, _, trainer = train_fused(cfgs, epochs=4)
    assert fused[0].trainer.task.scale.mean != fused[1].trainer.task.scale.mean
    fused_val = evaluate_members(trainer.stacked, MemberSplits([m.data.val for m in fused]), trainer.objective,
                                 trainer.precision)
    for cfg, member, metrics in zip(cfgs, fused, fused_val):
        solo = train_solo(cfg, epochs=4)
        for name, expected in solo.model.state_dict().items():
            assert (member.model.state_dict()[name] - expected).norm() <= 1e-5 * expected.norm(), name
        expected = evaluate(solo.model, solo.data.val, solo.trainer.task, solo.trainer.precision)
        assert metrics == pytest.approx(expected, rel=1e-5)
        assert expected["rmse"] > 10  # in the target's units (disease progression, 25-346), not standardised


def test_with_dropout_members_match_their_solo_runs_in_distribution(one_thread):
    """Dropout 0.5, seeds 0-5: each fused member draws its own masks (not its solo run's), so the runs differ,
    but the mean validation accuracy over the seeds is the solo runs' within the seeds' noise."""
    cfgs = [validate(compose_config(*TINY_MLP, "optimizer=sgd", "optimizer.lr=0.2", "regularization.dropout=0.5",
                                    f"seed={seed}")) for seed in range(6)]
    fused, _, trainer = train_fused(cfgs, epochs=3)
    fused_acc = torch.tensor([metrics["acc"] for metrics in evaluate_members(
        trainer.stacked, MemberSplits([m.data.val for m in fused]), trainer.objective, trainer.precision)])
    solo_acc = []
    for cfg in cfgs:
        solo = train_solo(cfg, epochs=3)
        solo_acc.append(evaluate(solo.model, solo.data.val, solo.trainer.task, solo.trainer.precision)["acc"])
    solo_acc = torch.tensor(solo_acc)
    assert not torch.equal(fused_acc, solo_acc)  # other masks, other runs
    noise = (fused_acc.var() / 6 + solo_acc.var() / 6).sqrt()  # standard error of the difference of the means
    assert (fused_acc.mean() - solo_acc.mean()).abs() <= 3 * noise + 0.005, (fused_acc, solo_acc)


def test_stacked_lenets_keep_each_members_batch_norm_statistics():
    torch.manual_seed(0)
    models = [LeNet([1, 28, 28], 10, activation="relu", pooling="max", batch_norm=True) for _ in range(3)]
    stacked = StackedModel.build(models, channels_last=True)
    stacked.verify(models, torch.randn(4, 1, 28, 28))
    solo = [LeNet([1, 28, 28], 10, activation="relu", pooling="max", batch_norm=True) for _ in range(3)]
    for own, model in zip(solo, models):
        own.load_state_dict(model.state_dict())
    stacked.bind_members()
    inputs = torch.randn(3, 8, 1, 28, 28)  # each member its own batch
    outputs = stacked.train()(Act(inputs, MEMBER, 3))
    for index, own in enumerate(solo):
        expected = own.train()(inputs[index])
        assert torch.allclose(outputs[index], expected, atol=1e-5)
        for name, value in own.state_dict().items():  # running means, variances and batch counts too
            assert torch.allclose(models[index].state_dict()[name].float(), value.float(), atol=1e-6), name


def test_dropout_draws_each_members_mask_at_its_own_rate():
    rates = torch.tensor([0.0, 0.3, 0.7])
    ones = Act(torch.ones(3, 64, 1000), MEMBER, 3)
    out = stack_dropout(rates, ones, training=True, all_zero=False).tensor
    dropped = (out == 0).float().mean(dim=(1, 2))
    assert torch.allclose(dropped, rates, atol=0.01)
    assert torch.allclose(out.mean(dim=(1, 2)), torch.ones(3), atol=0.03)  # kept units scaled by 1 / (1 - rate)
    assert not torch.equal(out[1, 0], out[1, 1])  # every example its own mask
    shared = stack_dropout(rates, Act(torch.ones(64, 1000), SHARED, 3), training=True, all_zero=False)
    assert shared.layout == MEMBER and not torch.equal(shared.tensor[1], shared.tensor[2])
    assert stack_dropout(rates, ones, training=False, all_zero=False) is ones


class Branches(nn.Module):
    """Two convolution branches concatenated (GoogLeNet, DenseNet), a residual sum, torch.flatten in forward."""

    def __init__(self) -> None:
        super().__init__()
        self.left, self.right = nn.Conv2d(1, 3, 3, padding=1), nn.Conv2d(1, 2, 5, padding=2)
        self.norm, self.pool, self.head = nn.BatchNorm2d(5), nn.AdaptiveAvgPool2d(2), nn.Linear(20, 4)

    def forward(self, x):
        y = torch.cat([self.left(x), self.right(x)], dim=1)
        y = torch.relu(self.norm(y)) + y
        return self.head(torch.flatten(self.pool(y), 1))


def test_concatenated_branches_and_residual_sums_stack_with_each_members_own_inputs():
    torch.manual_seed(0)
    models = [Branches().eval() for _ in range(3)]
    for channels_last in (False, True):
        stacked = StackedModel.build(models, channels_last).eval()
        stacked.verify(models, torch.randn(2, 1, 8, 8))
        inputs = torch.randn(3, 4, 1, 8, 8)
        outputs = stacked(Act(inputs, MEMBER, 3))
        for index, model in enumerate(models):
            assert torch.allclose(outputs[index], model(inputs[index]), atol=1e-5)


class Viewing(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(64, 10)

    def forward(self, x):
        return self.linear(x.view(x.size(0), -1))


def test_what_cannot_be_stacked_says_why():
    with pytest.raises(Unfusable, match="LSTM layer"):
        StackedModel.build([nn.Sequential(nn.LSTM(4, 4)) for _ in range(2)])
    with pytest.raises(Unfusable, match="forward calls"):
        StackedModel.build([Viewing() for _ in range(2)])
    with pytest.raises(Unfusable, match="differ in their layers"):
        StackedModel.build([MLP([1, 8, 8], 10, [32]), MLP([1, 8, 8], 10, [16])])
    # Members whose rate is 0 have no dropout site: they line up with those that have one.
    mixed = [MLP([1, 8, 8], 10, [32], dropout=rate) for rate in (0.0, 0.5)]
    stacked = StackedModel.build(mixed)
    assert [layer.dropout_rates.tolist() for layer in stacked.layers.values() if layer.dropout_rates is not None] \
        == [[0.0, 0.5]]
    stacked.verify(mixed, torch.randn(2, 1, 8, 8))


def test_jobs_that_differ_only_in_their_own_numbers_share_a_group():
    def config(*overrides):
        return validate(compose(config_name="config", overrides=list(overrides)))

    def key(*overrides):
        return group_key(config("model=mlp", *overrides))

    with initialize_config_module(version_base="1.3", config_module="dlrun.conf"):  # once: composing is quick then
        check_groups(key, config)


def check_groups(key, config) -> None:
    base = key("optimizer=sgd")
    # optimizer=momentum is torch.optim.SGD too, with its own momentum: a member's number.
    for own in (("optimizer.lr=0.3",), ("optimizer=momentum",), ("regularization.weight_decay=1e-3", "seed=4"), ("regularization.dropout=0.5",),
                ("regularization.label_smoothing=0.1", "regularization.grad_clip=1", "regularization.l1=1e-5"),
                ("scheduler=step", "scheduler.gamma=0.1"), ("model.init=xavier_normal", "model.init_param=2")):
        same = key("optimizer=sgd", "scheduler=step") if "scheduler=step" in own else base
        assert key("optimizer=sgd", *own) == same, own
    for other in (("optimizer=adam",), ("optimizer=nesterov",), ("trainer.batch_size=32",), ("model.hidden=[64]",), ("model.activation=elu",),
                  ("trainer.epochs=3",), ("dataset.subset=100",), ("optimizer=sgd", "+optimizer.nesterov=true",
                                                                     "+optimizer.momentum=0.9")):
        assert key("optimizer=sgd", *other) != base, other
    assert solo_reason(config("model=mlp")) is None
    for overrides, reason in ((("trainer.kfold=3",), "trainer.kfold"), (("trainer.log_grad_norms=true",), "grad_norms"),
                              (("device.compile=true",), "device.compile"), (("device.amp=fp16",), "fp16")):
        assert reason in solo_reason(config(*overrides)), overrides
