"""A real single-node Slurm on this machine: a `hydra/launcher=submitit_slurm` job through time-limit
requeues and an `scontrol requeue` preemption, checked against the same run never interrupted.

Opt-in (pytest does not collect it: the name does not start with test_). Needs root and Debian's
packages (`apt-get install -y slurm-wlm munge`); run from the repository root:

    sudo .venv/bin/python tests/cluster/slurm_preemption.py            # about 8 minutes
    sudo .venv/bin/python tests/cluster/slurm_preemption.py --keep     # leave the folder for a look
    sudo .venv/bin/python tests/cluster/slurm_preemption.py --tasks 2  # one run on two processes (gloo)

What it does:
1. starts munged, slurmctld and slurmd (foreground processes of this script, on localhost) with a
   generated slurm.conf in a temporary folder: one node, one partition, requeueing allowed, and
   `cred_expire=30`, so that a requeued job waits 30 s before it starts again (Slurm's default: 120);
2. trains the reference: the same command without Slurm, never interrupted;
3. runs `dlrun -m hydra/launcher=submitit_slurm` with a one-minute time limit and
   `signal_delay_s=30`: Slurm sends SIGUSR2 30 s before the limit (or up to a minute earlier, its
   resolution), dlrun saves where it stands,
   submitit requeues the job (the same Slurm job id), and the next run of it continues in the
   same job directory, again and again;
4. after two such time-limit requeues, preempts the running job with `scontrol requeue` (Slurm
   sends SIGTERM, then requeues it);
5. checks that the job ended `completed` with the reference's weights (bitwise), test metrics and
   metrics.jsonl (timings aside), one directory, the attempts it expects in status.json, and no
   lock or temporary file left; prints the attempts as a table (docs/preemption-and-clusters.md);
6. stops the daemons it started (by their pids).
Exit code 0 when every check holds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# On one thread the CPU run is exact: a resumed run equals the uninterrupted one bit for bit.
RUN = ["model=lenet", "dataset.subset=640", "trainer.batch_size=32", "trainer.epochs=200", "device.num_threads=1",
       "trainer.save_every_minutes=null", "seed=3"]
TIMINGS = ("examples_per_sec", "tokens_per_sec", "epoch_time_s", "compile_s", "run/duration_s")
DLRUN = Path(sys.executable).with_name("dlrun")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, runs)")
    parser.add_argument("--timeouts", type=int, default=2, help="time-limit requeues before the preemption")
    parser.add_argument("--tasks", type=int, default=1, help="processes of the run (Slurm tasks; the reference "
                        "runs under torchrun with as many)")
    args = parser.parse_args()
    if os.geteuid() != 0 or not shutil.which("slurmctld") or not shutil.which("munged"):
        print("needs root and `apt-get install -y slurm-wlm munge`", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="dlrun-slurm-"))
    daemons: list[subprocess.Popen] = []
    try:
        env = start_cluster(work, daemons)
        reference = work / "reference"
        launch = [str(DLRUN)] if args.tasks == 1 else [sys.executable, "-m", "torch.distributed.run",
                                                       f"--nproc_per_node={args.tasks}", "-m", "dlrun"]
        run_checked([*launch, f"hydra.run.dir={reference}", *RUN], cwd=work, env=env, what="the reference run")
        job_dir, record = run_on_slurm(work, env, args.timeouts, args.tasks)
        failures = compare(reference, job_dir, record, args.timeouts)
    finally:
        for daemon in reversed(daemons):
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                daemon.kill()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept: {work}")
    for failure in failures:
        print(f"FAILED: {failure}")
    print("all checks hold" if not failures else f"{len(failures)} check(s) failed")
    return 1 if failures else 0


def start_cluster(work: Path, daemons: list[subprocess.Popen]) -> dict[str, str]:
    """munged, slurmctld and slurmd on localhost (their output in <work>/log/); the environment that points
    Slurm's commands at them."""
    host = socket.gethostname()
    for folder in ("munge", "state", "spool", "log"):
        (work / folder).mkdir(parents=True)
    key = work / "munge" / "munge.key"
    subprocess.run(["mungekey", "--create", f"--keyfile={key}"], check=True)
    key.chmod(0o600)
    socket_path = work / "munge" / "munge.socket"
    work.chmod(0o755)  # munged's socket must be reachable
    daemons.append(start(["munged", "--foreground", "--force", f"--key-file={key}", f"--socket={socket_path}",
                          f"--pid-file={work / 'munge' / 'munged.pid'}", f"--log-file={work / 'log' / 'munged.log'}",
                          f"--seed-file={work / 'munge' / 'munged.seed'}"], work / "log" / "munged.out"))
    wait_until(lambda: socket_path.exists(), 30, "munged's socket")
    cpus = os.cpu_count() or 1
    memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    conf = work / "slurm.conf"
    conf.write_text(f"""\
ClusterName=dlrun
SlurmctldHost={host}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={socket_path},cred_expire=30
SlurmUser=root
SlurmdUser=root
SlurmctldPort=16817
SlurmdPort=16818
StateSaveLocation={work / 'state'}
SlurmdSpoolDir={work / 'spool'}
SlurmctldPidFile={work / 'slurmctld.pid'}
SlurmdPidFile={work / 'slurmd.pid'}
SlurmctldLogFile={work / 'log' / 'slurmctld.log'}
SlurmdLogFile={work / 'log' / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
JobRequeue=1
KillWait=30
MinJobAge=3600
NodeName={host} CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
""")
    env = {**os.environ, "SLURM_CONF": str(conf)}
    env.pop("HYDRA_FULL_ERROR", None)
    daemons.append(start(["slurmctld", "-D", "-f", str(conf)], work / "log" / "slurmctld.out", env))
    daemons.append(start(["slurmd", "-D", "-f", str(conf)], work / "log" / "slurmd.out", env))
    wait_until(lambda: "idle" in subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True,
                                                text=True).stdout, 60, "the node to be idle")
    os.environ["SLURM_CONF"] = str(conf)
    print(f"slurm up: {subprocess.run(['sinfo'], env=env, capture_output=True, text=True).stdout.strip()}")
    return env


def start(command: list[str], output: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    with open(output, "w") as handle:
        return subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT)


def run_on_slurm(work: Path, env: dict[str, str], timeouts: int, tasks: int) -> tuple[Path, list[str]]:
    """The sweep of one job (of `tasks` processes) on Slurm; after `timeouts` time-limit requeues,
    `scontrol requeue` it once."""
    sweep = work / "sweep"
    command = [str(DLRUN), "-m", "hydra/launcher=submitit_slurm", "hydra.launcher.partition=debug",
               "hydra.launcher.timeout_min=1", "hydra.launcher.signal_delay_s=30", "hydra.launcher.max_num_timeout=20",
               "hydra.launcher.cpus_per_task=1", f"hydra.launcher.tasks_per_node={tasks}", f"hydra.sweep.dir={sweep}",
               *RUN]
    started = time.monotonic()
    launcher = subprocess.Popen(command, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
    record: list[str] = []
    last_line = ""
    job_dir = None
    preempted = False
    while launcher.poll() is None:
        time.sleep(2)
        job_dirs = [path for path in sweep.glob("0_*") if path.is_dir()]
        job_dir = job_dirs[0] if job_dirs else None
        status = read(job_dir / "status.json") if job_dir else None
        line = describe(status)
        if line and line != last_line:
            last_line = line
            record.append(f"{time.monotonic() - started:5.0f} s  {line}")
            print(record[-1], flush=True)
        attempts = (status or {}).get("attempts") or []
        usr2 = sum(1 for attempt in attempts if attempt.get("signal") == "SIGUSR2")
        if not preempted and usr2 >= timeouts and attempts[-1].get("outcome") == "running" and \
                (job_dir / "metrics.jsonl").exists() and progressed(job_dir, attempts[-1]):
            job_id = next(p.name for p in (sweep / ".submitit").iterdir() if p.name.isdigit())
            print(f"preempting: scontrol requeue {job_id}", flush=True)
            subprocess.run(["scontrol", "requeue", job_id], env=env, check=True)
            record.append(f"scontrol requeue {job_id} at {time.monotonic() - started:.0f} s")
            preempted = True
    output = launcher.stdout.read()
    print(output[-3000:])
    if launcher.returncode != 0 or job_dir is None:
        raise SystemExit(f"the Slurm sweep failed ({launcher.returncode})")
    return job_dir, record


def progressed(job_dir: Path, attempt: dict) -> bool:
    """The running attempt continued the run and has trained a whole epoch since (it is mid-run)."""
    start = (attempt.get("from") or {}).get("epoch")
    lines = (job_dir / "metrics.jsonl").read_text().splitlines()
    return start is not None and len(lines) >= start + 1


def describe(status: dict | None) -> str:
    """The latest attempt in one line: who, from where, how it stands."""
    if not status:
        return ""
    attempts = status.get("attempts") or []
    latest = attempts[-1] if attempts else {}
    where = (latest.get("from") or {}).get("position", "from scratch")
    return (f"attempt {len(attempts)} ({latest.get('host')}, pid {latest.get('pid')}, "
            f"{where}): {latest.get('outcome')}"
            + (f" by {latest['signal']} at epoch {latest.get('epoch')} step {latest.get('step')}"
               if latest.get("signal") else ""))


def compare(reference: Path, job_dir: Path, record: list[str], timeouts: int) -> list[str]:
    import torch  # here: the daemons start without waiting for torch

    failures = []
    expected, got = (torch.load(path / "checkpoints" / "last.pt", weights_only=True) for path in (reference, job_dir))
    if not all(torch.equal(expected["model"][name], got["model"][name]) for name in expected["model"]):
        failures.append("the weights differ from the uninterrupted run's")
    summaries = [read(path / "summary.json") for path in (reference, job_dir)]
    if summaries[0]["test"] != summaries[1]["test"]:
        failures.append(f"test metrics differ: {summaries[0]['test']} vs {summaries[1]['test']}")
    lines = [[untimed(json.loads(line)) for line in (path / "metrics.jsonl").read_text().splitlines()]
             for path in (reference, job_dir)]
    if lines[0] != lines[1]:
        failures.append("metrics.jsonl differs from the uninterrupted run's (timings aside)")
    status = read(job_dir / "status.json")
    signals = [attempt.get("signal") for attempt in status["attempts"]]
    if status["status"] != "completed" or signals.count("SIGUSR2") < timeouts or "SIGTERM" not in signals:
        failures.append(f"status.json: {status['status']}, attempts ended by {signals}")
    if any(job_dir.rglob("*.tmp")) or (job_dir / "dlrun.lock").exists():
        failures.append("a temporary file or the lock was left behind")
    if len([path for path in job_dir.parent.glob("0_*") if path.is_dir()]) != 1:
        failures.append("more than one job directory")
    print("\n| attempt | host, pid | continued from | ended |\n|---|---|---|---|")
    for number, attempt in enumerate(status["attempts"], start=1):
        ended = attempt["outcome"] + (f" by {attempt['signal']} (epoch {attempt['epoch']}, step {attempt['step']})"
                                      if attempt.get("signal") else "")
        where = (attempt.get("from") or {}).get("position", "the start")
        print(f"| {number} | {attempt['host']}, {attempt['pid']} | {where} | {ended} |")
    print(f"\nreference test metrics: {summaries[0]['test']}\nSlurm job test metrics: {summaries[1]['test']}")
    print("\n".join(record))
    return failures


def run_checked(command: list[str], cwd: Path, env: dict[str, str], what: str) -> None:
    started = time.monotonic()
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{what} failed: {result.stderr[-2000:]}")
    print(f"{what}: {time.monotonic() - started:.0f} s")


def read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def untimed(metrics: dict) -> dict:
    return {key: value for key, value in metrics.items() if key not in TIMINGS}


def wait_until(ready, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not ready():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.5)


if __name__ == "__main__":
    sys.exit(main())
