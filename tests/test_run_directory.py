"""A run directory is append-only history: refused commands, damaged files, locks, full disks, read-only storage.

In-process runs, faults injected by patching the writers (a full disk is an OSError(ENOSPC) from
the checkpoint writer; read-only storage one of EROFS), so no test needs root; the real tmpfs
check is opt-in (DLRUN_TMPFS_TESTS=1, as root). The CLI is used where Hydra's own writing is
what is tested.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from conftest import read_json, run_cli
from dlrun.atomic import claim_directory, remove_temporaries, write_json
from dlrun.config import resolvers
from dlrun.errors import CheckpointError, ConfigError, RunDirectoryError, StorageError
from dlrun.run import checkpoint, lock
from dlrun.run.job_files import HeldLog
from dlrun.run.lock import LOCK_FILE, RESERVE_BYTES, RunLock
from dlrun.run.run_dir import written_folders
from dlrun.run.status import process_start
from dlrun.run.stop_signals import Interrupted, held
from dlrun.tools.evaluate import main as evaluate_main
from dlrun.train import run

SMALL = ("model=mlp", "model.hidden=[16]", "dataset.subset=64", "trainer.batch_size=32", "device.num_threads=1")


def hydra_config(*overrides: str):
    """The `hydra` section `dlrun <overrides>` runs with (resolving hydra.run.dir claims it, as Hydra's start does)."""
    with initialize_config_module(version_base="1.3", config_module="dlrun.conf"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=True).hydra


def checksums(folder: Path) -> dict[str, str]:
    """Every file under `folder` (hidden ones too) and the sha256 of its bytes."""
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def dead_pid() -> int:
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(finished.stdout)


def write_lock(run_dir: Path, **owner) -> None:
    held_by = {"host": socket.gethostname(), "pid": os.getpid(), "pid_started": process_start(os.getpid()),
               "taken": "2026-01-01T00:00:00+0000", "slurm_job": None, "slurm_restart": 0, "token": "t", **owner}
    (run_dir / LOCK_FILE).write_text(json.dumps(held_by))


@pytest.mark.slow
def test_a_refused_command_leaves_a_finished_run_byte_for_byte_and_the_right_one_continues_it(tmp_path):
    """Hydra writes .hydra/ and the log before dlrun runs: dlrun holds both back until the attempt is accepted."""
    trained = run_cli("hydra.run.dir=run", *SMALL, "trainer.epochs=1", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    run_dir = tmp_path / "run"
    before, first_log = checksums(run_dir), (run_dir / "dlrun.log").read_text()
    assert {".hydra/config.yaml", ".hydra/overrides.yaml", "dlrun.log", "status.json", "attempts.jsonl",
            "checkpoints/last.pt"} <= before.keys()

    refused = run_cli("hydra.run.dir=run", *SMALL, "trainer.epochs=1", "optimizer.lr=-1", cwd=tmp_path)
    assert (refused.returncode, refused.stderr) == (2, "dlrun: error: optimizer.lr=-1 is out of range: must be > 0\n")
    assert checksums(run_dir) == before

    continued = run_cli("hydra.run.dir=run", *SMALL, "trainer.epochs=2", cwd=tmp_path)
    assert continued.returncode == 0, continued.stderr
    status = read_json(run_dir / "status.json")
    assert [attempt["outcome"] for attempt in status["attempts"]] == ["completed", "completed"]
    assert status["attempts"][1]["from"]["epoch"] == 2 and status["attempts"][1]["overrides"][-1] == "trainer.epochs=2"
    assert "trainer.epochs=2" in (run_dir / ".hydra" / "overrides.yaml").read_text()
    log = (run_dir / "dlrun.log").read_text()
    assert log.startswith(first_log) and "resuming from" in log[len(first_log):]  # appended, nothing in between
    assert not (run_dir / LOCK_FILE).exists()


def test_refusals_leave_a_run_as_it_was(cfg_for, tmp_path):
    """Another config, a directory in use, a new run aimed at it: each refused with nothing written."""
    run_dir = tmp_path / "run"
    run(cfg_for(*SMALL, "trainer.epochs=1"), run_dir=run_dir)
    before = checksums(run_dir)
    with pytest.raises(ConfigError, match="already holds a run of another config; nothing was changed"):
        run(cfg_for(*SMALL, "trainer.epochs=1", "seed=3"), run_dir=run_dir)
    source = tmp_path / "source.pt"
    source.write_bytes((run_dir / "checkpoints" / "last.pt").read_bytes())
    with pytest.raises(RunDirectoryError, match="already holds a run; trainer.resume=.* starts a new run"):
        run(cfg_for(*SMALL, "trainer.epochs=2", f"trainer.resume={source}"), run_dir=run_dir)
    assert checksums(run_dir) == before
    write_lock(run_dir)  # this test process "writes" the run now
    with pytest.raises(RunDirectoryError, match=f"is in use by pid {os.getpid()} on {socket.gethostname()}"):
        run(cfg_for(*SMALL, "trainer.epochs=2"), run_dir=run_dir)
    (run_dir / LOCK_FILE).unlink()
    assert checksums(run_dir) == before


def test_hydra_writes_nothing_itself_and_the_log_is_held_until_accepted(tmp_path):
    hydra_cfg = hydra_config(f"output_root={tmp_path}")
    assert hydra_cfg.output_subdir is None
    assert hydra_cfg.job_logging.handlers.file["class"] == "dlrun.run.job_files.HeldLog"
    handler = HeldLog(str(tmp_path / "elsewhere" / "dlrun.log"))
    handler.emit(logging.makeLogRecord({"msg": "held"}))
    assert not (tmp_path / "elsewhere").exists() and not list(tmp_path.iterdir())
    handler.open_in(tmp_path)
    handler.emit(logging.makeLogRecord({"msg": "then written"}))
    handler.close()
    assert (tmp_path / "dlrun.log").read_text() == "held\nthen written\n"


def test_same_second_directories_are_distinct_across_processes(tmp_path):
    target = tmp_path / "outputs" / "2026-01-01" / "12-00-00"
    with ProcessPoolExecutor(6, mp_context=get_context("fork")) as pool:
        claimed = list(pool.map(claim_directory, [target] * 6))
    assert sorted(path.name for path in claimed) == ["12-00-00", *(f"12-00-00_{n}" for n in range(2, 7))]
    # The resolver behind the default hydra.run.dir: one directory per process, the same one when asked again.
    resolvers.forget_claimed()  # as in a new process
    first = resolvers.new_dir(str(tmp_path / "x"))
    assert resolvers.new_dir(str(tmp_path / "x")) == first == str(tmp_path / "x") and Path(first).is_dir()
    resolvers.forget_claimed()
    assert resolvers.new_dir(str(tmp_path / "x")) == str(tmp_path / "x_2")
    # dlrun's own hydra.run.dir, resolved by two processes (each its own cache) at once: two new directories.
    dirs = []
    for _ in range(2):
        resolvers.forget_claimed()
        hydra_cfg = hydra_config(f"output_root={tmp_path / 'outputs'}", "name=same")
        dirs.append(Path(hydra_cfg.run.dir))
    assert dirs[0] != dirs[1] and all(path.is_dir() for path in dirs)
    assert dirs[0].parent.parent == tmp_path / "outputs" and dirs[0].name.endswith("_same")  # <date>/<time>_<name>
    if dirs[1].parent == dirs[0].parent and dirs[1].name.startswith(dirs[0].name.partition("_")[0]):  # same second
        assert dirs[1].name == f"{dirs[0].name}_2"


def test_a_damaged_status_json_is_rebuilt_from_attempts_and_the_checkpoint(cfg_for, tmp_path):
    run_dir = tmp_path / "run"
    run(cfg_for(*SMALL, "trainer.epochs=1"), run_dir=run_dir)
    first_epoch = (run_dir / "metrics.jsonl").read_text().splitlines()[0]
    (run_dir / "status.json").write_text('{"status": "compl')  # a write cut short by hand, or a disk fault
    summary = run(cfg_for(*SMALL, "trainer.epochs=2"), run_dir=run_dir)
    assert summary["resumed_from"] == str(run_dir / "checkpoints" / "last.pt") and summary["epochs_completed"] == 2
    assert (run_dir / "metrics.jsonl").read_text().splitlines()[0] == first_epoch
    assert (run_dir / "status.damaged.json").read_text() == '{"status": "compl'
    status = read_json(run_dir / "status.json")
    assert [attempt["outcome"] for attempt in status["attempts"]] == ["completed", "completed"]
    assert "status.json is not JSON" in status["attempts"][1]["rebuilt_status"]
    assert "checkpoints/last.pt and attempts.jsonl" in status["attempts"][1]["rebuilt_status"]


def test_a_damaged_status_json_with_nothing_to_rebuild_from_is_refused_untouched(cfg_for, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "status.json").write_text("\x00" * 16)
    (run_dir / "metrics.jsonl").write_text('{"epoch": 1}\n')
    before = checksums(run_dir)
    with pytest.raises(RunDirectoryError, match=r"status.json is not JSON.*nothing was changed"):
        run(cfg_for(*SMALL, "trainer.epochs=1"), run_dir=run_dir)
    assert checksums(run_dir) == before


def test_an_unreadable_checkpoint_is_refused_before_anything_is_written(cfg_for, tmp_path):
    run_dir = tmp_path / "run"
    run(cfg_for(*SMALL, "trainer.epochs=1"), run_dir=run_dir)
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"PK\x03\x04 damaged")
    write_json(run_dir / "status.json", {**read_json(run_dir / "status.json"), "status": "interrupted"})
    before = checksums(run_dir)
    with pytest.raises(CheckpointError, match="last.pt is unreadable or corrupt .*; nothing was changed"):
        run(cfg_for(*SMALL, "trainer.epochs=2"), run_dir=run_dir)
    assert checksums(run_dir) == before


def test_the_lock_refuses_a_live_owner_and_takes_over_a_dead_one(tmp_path, monkeypatch):
    mine = RunLock.acquire(tmp_path)
    assert (tmp_path / LOCK_FILE).stat().st_size >= RESERVE_BYTES  # space set aside for the last records
    with pytest.raises(RunDirectoryError, match=f"in use by pid {os.getpid()} on {socket.gethostname()}"):
        RunLock.acquire(tmp_path)
    mine.free_reserve()
    assert (tmp_path / LOCK_FILE).stat().st_size < 1024 and json.loads((tmp_path / LOCK_FILE).read_text())
    mine.release()
    assert not (tmp_path / LOCK_FILE).exists()

    write_lock(tmp_path, pid=dead_pid())
    taken = RunLock.acquire(tmp_path)
    assert "is gone from" in taken.taken_over["why"] and taken.taken_over["pid"] != os.getpid()
    taken.release()

    write_lock(tmp_path, host="another-node")  # another host: alive while it refreshes the lock
    with pytest.raises(RunDirectoryError, match="in use by pid .* on another-node"):
        RunLock.acquire(tmp_path)
    os.utime(tmp_path / LOCK_FILE, (time.time() - lock.STALE_AFTER_S - 5,) * 2)
    assert "not refreshed for" in RunLock.acquire(tmp_path).taken_over["why"]

    (tmp_path / LOCK_FILE).unlink()
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    write_lock(tmp_path, host="another-node", slurm_job="77", slurm_restart=0)  # before Slurm requeued this job
    assert "earlier run of Slurm job 77" in RunLock.acquire(tmp_path).taken_over["why"]


def test_a_stale_lock_is_noted_and_temporaries_of_a_killed_save_are_removed(cfg_for, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    real_save = checkpoint.save_checkpoint

    def killed_at_epoch_2(path, state):
        if state["epoch"] == 2:
            (path.parent / f".{path.name}.{dead_pid()}.0123abcd.tmp").write_bytes(b"half a checkpoint")
            raise KeyboardInterrupt  # kill -9 leaves what a process writes; here the test leaves it
        real_save(path, state)

    monkeypatch.setattr(checkpoint, "save_checkpoint", killed_at_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        run(cfg_for(*SMALL, "trainer.epochs=3"), run_dir=run_dir)
    monkeypatch.setattr(checkpoint, "save_checkpoint", real_save)
    write_lock(run_dir, pid=dead_pid())  # as a kill -9 leaves it
    summary = run(cfg_for(*SMALL, "trainer.epochs=3"), run_dir=run_dir)
    assert summary["epochs_completed"] == 3
    assert not list(run_dir.rglob("*.tmp")) and not (run_dir / LOCK_FILE).exists()
    attempt = read_json(run_dir / "status.json")["attempts"][-1]
    assert "is gone from" in attempt["took_over_lock"]["why"] and attempt["from"]["epoch"] == 2


def test_the_temporaries_of_the_folds_the_refit_and_hydra_are_found_too(tmp_path):
    leftovers = [tmp_path / "refit" / "checkpoints" / ".last.pt.12345.0123abcd.tmp",
                 tmp_path / "fold_1" / ".summary.json.12345.0123abcd.tmp",
                 tmp_path / ".hydra" / ".config.yaml.12345.0123abcd.tmp"]
    for path in leftovers:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("half a file")
    (tmp_path / "fold_1" / "notes.tmp").write_text("not a temporary of atomic_write")
    removed = [path for folder in written_folders(tmp_path) for path in remove_temporaries(folder)]
    assert sorted(removed) == sorted(leftovers) and (tmp_path / "fold_1" / "notes.tmp").exists()


def test_a_full_disk_ends_in_a_truthful_status_that_names_the_file(cfg_for, tmp_path, monkeypatch):
    """ENOSPC from the checkpoint writer: the error names the file, status.json records it although the
    status write itself first meets a full disk (the lock's reserve is given back), no temporary stays."""
    run_dir = tmp_path / "run"
    real_save = checkpoint.torch.save
    full = []

    def disk_fills(state, handle):
        handle.write(b"x" * 1000)
        full.append(True)
        raise OSError(errno.ENOSPC, "No space left on device")

    def status_write(path, data):
        if full and (run_dir / LOCK_FILE).stat().st_size >= RESERVE_BYTES:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        write_json(path, data)

    monkeypatch.setattr(checkpoint.torch, "save", disk_fills)
    monkeypatch.setattr("dlrun.run.status.write_json", status_write)
    with pytest.raises(StorageError) as raised:
        run(cfg_for(*SMALL, "trainer.epochs=2"), run_dir=run_dir)
    best = run_dir / "checkpoints" / "best.pt"
    assert str(raised.value) == (f"cannot write {best}: No space left on device "
                                 "(the disk is full: free space, then continue the run)")
    status = read_json(run_dir / "status.json")
    assert status["status"] == "failed" and status["error"] == f"StorageError: {raised.value}"
    assert status["attempts"][-1]["outcome"] == "failed"
    assert not list(run_dir.rglob("*.tmp")) and not (run_dir / LOCK_FILE).exists()
    monkeypatch.setattr(checkpoint.torch, "save", real_save)
    monkeypatch.setattr("dlrun.run.status.write_json", write_json)
    full.clear()
    assert run(cfg_for(*SMALL, "trainer.epochs=2"), run_dir=run_dir)["epochs_completed"] == 2  # space freed


def test_a_run_directory_that_cannot_be_written_is_refused_in_one_line(cfg_for, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    run(cfg_for(*SMALL, "trainer.epochs=1"), run_dir=run_dir)
    before = checksums(run_dir)

    def read_only(path):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(lock, "_open_new", read_only)  # root ignores permissions: patch the storage instead
    with pytest.raises(RunDirectoryError, match=r"cannot write in .*run \(Read-only file system\).*dlrun-eval --out"):
        run(cfg_for(*SMALL, "trainer.epochs=2"), run_dir=run_dir)
    assert checksums(run_dir) == before


def test_a_read_only_run_is_evaluated_with_out_and_shows_its_metrics_either_way(digits_run, tmp_path, monkeypatch,
                                                                               capsys):
    expected = read_json(digits_run / "summary.json")["test"]["test/acc"]
    in_the_run = set((digits_run / "eval").glob("*"))  # other tests evaluate this shared run too
    evaluate_main([str(digits_run), "--out", str(tmp_path / "evals")])
    written = read_json(next((tmp_path / "evals").glob("*/metrics.json")))
    assert written["metrics"]["test/acc"] == pytest.approx(expected)
    assert set((digits_run / "eval").glob("*")) == in_the_run  # nothing written into the run
    capsys.readouterr()

    def read_only(parent):
        raise OSError(errno.EROFS, "Read-only file system", str(parent))

    monkeypatch.setattr("dlrun.tools.evaluate._new_folder", read_only)
    with pytest.raises(SystemExit) as exited:
        evaluate_main([str(digits_run)])
    out, err = capsys.readouterr()
    assert exited.value.code == 1 and "test/acc" in out and f"{expected:.6g}" in out
    assert err == (f"dlrun-eval: error: cannot write {digits_run / 'eval'} (Read-only file system); the metrics "
                   "above are not saved: write the evaluation elsewhere with --out DIR\n")


@pytest.fixture
def interruptible():
    """SIGINT as an interactive shell leaves it: a background job (`make test &`, some CI runners) inherits
    it ignored, and dlrun rightly leaves an ignored signal ignored."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_a_signal_during_start_up_stops_before_anything_is_written(cfg_for, tmp_path, interruptible):
    """Ctrl-C while the libraries load is held (no KeyboardInterrupt inside an import); the run stops at once."""
    with pytest.raises(Interrupted, match="stopped by SIGINT while starting") as stopped:
        with held():
            os.kill(os.getpid(), signal.SIGINT)  # recorded, not raised
    assert stopped.value.exit_code == 130

    run_dir = tmp_path / "run"
    run(cfg_for(*SMALL, "trainer.epochs=1"), run_dir=run_dir)
    before = checksums(run_dir)
    with pytest.raises(Interrupted, match="during start-up"), held():
        os.kill(os.getpid(), signal.SIGINT)
        run(cfg_for(*SMALL, "trainer.epochs=2"), run_dir=run_dir)
    with pytest.raises(Interrupted, match=r"during start-up.*\(ConfigError on the way out\)"), held():
        os.kill(os.getpid(), signal.SIGTERM)  # an error met after a signal is the signal's doing
        run(cfg_for(*SMALL, "optimizer.lr=-1"), run_dir=run_dir)
    assert checksums(run_dir) == before


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("DLRUN_TMPFS_TESTS") != "1" or os.geteuid() != 0,
                    reason="opt-in (DLRUN_TMPFS_TESTS=1) and needs root to mount a tmpfs")
def test_a_real_full_disk_on_tmpfs(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(mount)], check=True)
    try:
        full = run_cli(f"hydra.run.dir={mount / 'run'}", *SMALL, "model.hidden=[256]", "trainer.epochs=3",
                       cwd=tmp_path)
        assert full.returncode == 1 and "No space left on device" in full.stderr, full.stderr
        status = read_json(mount / "run" / "status.json")
        assert status["status"] == "failed" and str(mount / "run" / "checkpoints") in status["error"]
        assert not list((mount / "run").rglob("*.tmp"))
        subprocess.run(["mount", "-o", "remount,size=8m", str(mount)], check=True)
        again = run_cli(f"hydra.run.dir={mount / 'run'}", *SMALL, "model.hidden=[256]", "trainer.epochs=3",
                        cwd=tmp_path)
        assert again.returncode == 0, again.stderr
        assert read_json(mount / "run" / "summary.json")["epochs_completed"] == 3
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_config_keys_that_do_not_fit_are_config_errors(cfg_for, tmp_path):
    for override, message in (("optimizer.lr=abc", "wrong type for 'optimizer.lr': expected a number, got 'abc'"),
                              ("optimizer.lr=inf", "optimizer.lr=inf is not a finite number"),
                              ("regularization.weight_decay=nan", "regularization.weight_decay=nan is not a finite"),
                              ("optimizer.betas=[abc,0.9]", "wrong type for 'optimizer.betas[0]': expected a number")):
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
            run(cfg_for("model=mlp", "optimizer=adam", override), run_dir=tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_two_commands_in_one_process_in_the_same_second_get_two_run_directories(tmp_path, monkeypatch):
    """`dlrun.cli.main()` twice from a notebook: the second run is not handed the first one's directory."""
    from dlrun import cli

    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")  # main() sets it; restored afterwards
    for _ in range(2):  # the same path asked for, as two commands in one second ask for one
        monkeypatch.setattr(sys, "argv", ["dlrun", "debug=smoke", *SMALL,
                                          f"hydra.run.dir='${{dlrun.new_dir:{tmp_path / 'run'}}}'"])
        cli.main()
    assert sorted(path.name for path in tmp_path.glob("run*")) == ["run", "run_2"]
    assert all(read_json(tmp_path / name / "status.json")["status"] == "completed" for name in ("run", "run_2"))
