"""What the processes of a distributed run agree on, in-process: checks, the stop agreement as the
SavePoints uses it, RNG states per rank, status.json written by several processes, the environment."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Optional

import pytest
import torch
from torch import nn

from conftest import compose_config, run_cli
from dlrun.config import validate
from dlrun.engine.distributed import Ranks
from dlrun.engine.position import EpochPosition
from dlrun.errors import ConfigError
from dlrun.run import checkpoint, processes
from dlrun.run.save_points import SavePoints, SaveSchedule
from dlrun.run.status import RunStatus, read_status
from dlrun.run.stop_signals import Interrupted, StopSignals


def test_an_uneven_batch_sync_batchnorm_on_the_cpu_and_detection_on_several_processes_are_one_line_errors():
    cfg = validate(compose_config("trainer.batch_size=16", "device=cpu"))
    Ranks(0, 2).check(cfg)
    with pytest.raises(ConfigError, match=r"^trainer.batch_size=16 does not split evenly over 3 processes .* "
                                          r"use a multiple of 3, e.g. 15 or 18$"):
        Ranks(0, 3).check(cfg)
    with pytest.raises(ConfigError, match="device.sync_batchnorm=true needs CUDA"):
        Ranks(0, 2).check(validate(compose_config("device=cpu", "device.sync_batchnorm=true")))
    Ranks().check(validate(compose_config("trainer.batch_size=7", "device=cpu", "device.sync_batchnorm=true")))
    detection = validate(compose_config("dataset=synthetic_detection", "model=tiny_ssd", "device=cpu"))
    with pytest.raises(ConfigError, match=r"^task=detection runs on one process for now: its mAP needs every "):
        Ranks(0, 2).check(detection)
    Ranks().check(detection)


def test_sync_batchnorm_converts_the_batchnorm_layers_of_a_distributed_run_only():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    assert isinstance(Ranks(0, 2).convert_batchnorm(model, True)[1], nn.SyncBatchNorm)
    assert Ranks().convert_batchnorm(model, True) is model and Ranks(0, 2).convert_batchnorm(model, False) is model


class LaggingRanks(Ranks):
    """Two processes as rank 0 sees them when the other one never gets a signal: the agreement's one-step lag."""

    def __init__(self) -> None:
        super().__init__(rank=0, world=2)
        self.waiting: Optional[tuple[Optional[int], bool]] = None

    def verdict(self, signum: Optional[int], clock_due: bool) -> tuple[Optional[int], bool]:
        verdict, self.waiting = self.waiting or (None, False), None
        return verdict

    def post(self, signum: Optional[int], clock_due: bool) -> None:
        self.waiting = (signum, clock_due)

    def agree_now(self, signum: Optional[int]) -> Optional[int]:
        pending, self.waiting = (self.waiting or (None, False))[0], None
        return signum or pending

    def totals(self, position: EpochPosition) -> EpochPosition:
        return position

    def gather_rng(self, rng: dict[str, Any]) -> dict[str, Any]:
        return rng


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def saver_and_saves(tmp_path: Path, ranks: Ranks, schedule: SaveSchedule) -> tuple[SavePoints, list, StopSignals]:
    saves: list[Optional[int]] = []

    def snapshot(position: Optional[EpochPosition], rng: dict[str, Any]) -> dict[str, Any]:
        saves.append(position.step if position is not None else None)
        return {"model": {}, "epoch": 0}

    stop = StopSignals()  # not entered: the test sets the flag as the handler would
    return SavePoints(tmp_path, snapshot, schedule, stop, torch.Generator(), ranks=ranks), saves, stop


def steps(saver: SavePoints, stop: StopSignals, signal_at: Optional[int] = None, clock: Optional[Clock] = None,
          clock_at: Optional[int] = None) -> EpochPosition:
    position = EpochPosition(epoch=1, batches=6, order=None, step_losses=torch.zeros(6))
    for step in range(1, 7):
        position.advance(torch.tensor(1.0), torch.tensor([1.0, 1.0]))
        if step == signal_at:
            stop.signum = 15  # arrives during this step, on this process only
        if clock is not None and step == clock_at:
            clock.now = 3600.0
        saver.after_step(position)
    return position


def test_processes_stop_one_step_after_a_signal_and_save_on_the_step_count_at_once(tmp_path):
    saver, saves, stop = saver_and_saves(tmp_path, LaggingRanks(), SaveSchedule(2, None))
    with pytest.raises(Interrupted) as stopped:
        steps(saver, stop, signal_at=3)
    assert (stopped.value.epoch, stopped.value.step, saves) == (1, 4, [2, 4])  # steps 2 and 4 due; stop at 4

    saver, saves, stop = saver_and_saves(tmp_path, Ranks(), SaveSchedule(2, None))
    with pytest.raises(Interrupted) as stopped:
        steps(saver, stop, signal_at=3)
    assert (stopped.value.step, saves) == (3, [2, 3])  # one process acts on its own flag at once


def test_the_save_clock_is_agreed_one_step_later_and_the_last_step_settles_a_signal(tmp_path):
    clock = Clock()
    saver, saves, stop = saver_and_saves(tmp_path, LaggingRanks(), SaveSchedule(None, 10, clock=clock))
    steps(saver, stop, clock=clock, clock_at=2)
    assert saves == [3]

    saver, saves, stop = saver_and_saves(tmp_path, LaggingRanks(), SaveSchedule(None, None))
    with pytest.raises(Interrupted) as stopped:
        steps(saver, stop, signal_at=6)  # the epoch's last step: agreed before validation starts
    assert (stopped.value.step, saves) == (6, [6])


def test_several_processes_finish_validation_before_stopping_at_the_epoch_end(tmp_path):
    saver, saves, stop = saver_and_saves(tmp_path, LaggingRanks(), SaveSchedule(None, None))
    position = steps(saver, stop)
    saver.start_validation(position)
    stop.signum = 15
    saver.during_validation()  # no stop inside validation: the others may be in the middle of theirs
    saver.during_test()
    with pytest.raises(Interrupted) as stopped:
        saver.end_of_epoch(1, improved=False)
    assert (stopped.value.epoch, stopped.value.step, saves) == (2, 0, [None])


def test_each_rank_continues_its_own_rng_streams_and_a_new_rank_draws_its_own():
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(1)
    main = checkpoint.rng_states(generator)
    torch.manual_seed(2)
    other = {key: value for key, value in checkpoint.rng_states(generator).items() if key != "shuffle"}
    saved = {**main, "ranks": [other]}
    assert checkpoint.restore_rng_states(saved, generator, rank=1)
    assert torch.equal(torch.get_rng_state(), other["torch"])
    assert not checkpoint.restore_rng_states(saved, generator, rank=2)  # world grew: it draws its own
    assert torch.equal(torch.get_rng_state(), main["torch"])

    Ranks(2, 3).seed_own_streams(seed=0)
    first = torch.rand(1)
    Ranks(2, 3).seed_own_streams(seed=0, global_step=12)
    assert not torch.equal(first, torch.rand(1))


def test_the_first_failure_of_a_process_stays_in_status_json(tmp_path):
    main = RunStatus(tmp_path, "f" * 16, ["model=mlp"])
    main.write("running")
    follower = RunStatus.of_attempt(tmp_path, rank=1)
    follower.ended_by(ValueError("bad batch"))
    main.continuing_from({"checkpoint": "x", "epoch": 2, "step": 0, "position": "end of epoch 1"})
    main.ended_by(RuntimeError("Connection closed by peer"))  # rank 0 only noticed rank 1 was gone
    status = read_status(tmp_path)
    assert (status["status"], status["rank"], status["error"]) == ("failed", 1, "rank 1: ValueError: bad batch")
    assert status["pid"] == main.attempt["pid"] and len(status["attempts"]) == 1
    assert status["attempts"][0]["outcome"] == "failed" and status["attempts"][0]["rank"] == 1

    again = RunStatus(tmp_path, "f" * 16, ["model=mlp"])  # the next attempt writes as usual
    again.attempt["pid"] += 1
    again.write("running")
    assert read_status(tmp_path)["status"] == "running"


def test_the_process_environment_of_torchrun_and_of_a_submitit_job(monkeypatch, tmp_path):
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") and "SUBMITIT" not in key}
    monkeypatch.setattr(os, "environ", environment)  # submitit exports into os.environ
    assert processes._place_from_environment() is None and processes.environment_rank() == 0
    assert processes.join(validate(compose_config()).device) == Ranks()

    environment.update(SUBMITIT_EXECUTOR="local", SUBMITIT_LOCAL_JOB_ID="4242", SUBMITIT_LOCAL_NTASKS="2",
                       SUBMITIT_LOCAL_JOB_NUM_NODES="1", SUBMITIT_LOCAL_NODEID="0", SUBMITIT_LOCAL_GLOBALID="1",
                       SUBMITIT_LOCAL_LOCALID="1")
    assert processes._place_from_environment() == (1, 2, 1, 2)
    assert environment["RANK"] == "1" and environment["WORLD_SIZE"] == "2" and environment["MASTER_ADDR"]

    environment.update(RANK="3", WORLD_SIZE="4", LOCAL_RANK="1", LOCAL_WORLD_SIZE="2")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert processes._place_from_environment() == (3, 4, 1, 2) and processes.environment_rank() == 3
    overrides = processes.follower_overrides()
    scratch = Path(overrides[0].partition("=")[2])
    assert scratch.parent == tmp_path and scratch.is_dir()
    assert overrides[1:] == [f"hydra.sweep.dir={scratch}", "hydra.output_subdir=null", "hydra/hydra_logging=disabled"]
    environment["RANK"] = "0"
    assert processes.follower_overrides() == []


def test_processes_other_than_rank_0_leave_bad_input_to_it_and_leave_no_directory(tmp_path):
    quiet = run_cli("trainer.epoch=3", cwd=tmp_path, env={"RANK": "1", "WORLD_SIZE": "2", "TMPDIR": str(tmp_path)})
    assert (quiet.returncode, quiet.stderr, quiet.stdout) == (2, "", "")
    assert list(tmp_path.iterdir()) == []  # neither outputs/ nor its throwaway Hydra directory
