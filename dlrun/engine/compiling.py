"""torch.compile that pays: when to compile (device.compile=auto), where Inductor keeps its caches,
and compile time measured apart from training time.

Compiling costs seconds to minutes up front and saves time on every later step; whether it pays
depends on the model, the device and the run's length. `CompileSwitch` wraps the model the
training loop calls:

- training forward passes go through `torch.compile` once compiling is decided (evaluation runs
  the eager model: a no-grad pass is a different graph, and compiling it too would cost a second
  compile, plus a recompile for the ragged last batch, for a pass a few percent of an epoch's work);
- the loop times every step that compiles (a batch shape not seen before) and reports that time
  as compile time, which the epoch's throughput then excludes;
- measured step times (eager and compiled) and compile times are kept per model, input shape and
  device settings in `step_times.json` in the cache folder, next to Inductor's own caches, so the
  next run decides from measurements and compiles from a warm cache.

`device.compile=auto` decides before every epoch while undecided, from the planned remaining
steps (see `decide`). A run with nothing measured yet trains its first epoch eagerly, which
measures the eager step time for the decision at the next epoch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

from dlrun.atomic import atomic_write

log = logging.getLogger("dlrun")
details = logging.getLogger("dlrun.details")  # dlrun.log only (conf/hydra/job_logging)
# Set DLRUN_COMPILE_CACHE to keep compiled kernels and step timings elsewhere (tests: a temporary folder).
CACHE_VARIABLE = "DLRUN_COMPILE_CACHE"
STATS_FILE = "step_times.json"
# A cold compile's cost before one was measured here (LeNet on a 2-core CPU measured ~15-25 s).
UNMEASURED_COMPILE_S = 40.0
# With no compiled step measured, compile only when the compile costs at most this share of the
# eager run: a run is never more than a few percent slower for trying (issue 16).
MAX_UNMEASURED_SHARE = 0.03
# A measured saving must exceed the compile cost by this factor (step times vary with machine load).
MARGIN = 1.25
# Epochs shorter than this measure warm-up more than step time and are not recorded.
MIN_RECORDED_STEPS = 10


def cache_folder() -> Path:
    """$DLRUN_COMPILE_CACHE, else the user's cache: $XDG_CACHE_HOME/dlrun/compile (~/.cache/dlrun/compile)."""
    if os.environ.get(CACHE_VARIABLE):
        return Path(os.environ[CACHE_VARIABLE])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dlrun" / "compile"


def use_inductor_cache() -> str:
    """Point Inductor's caches (FX graphs, AOTAutograd, kernels) under `cache_folder()` unless the user
    chose a folder with TORCHINDUCTOR_CACHE_DIR; call before the first compile (Inductor reads it then).

    Inductor's default is a folder in /tmp (lost on reboot, per node), and importing some of
    torch's libraries already writes that default into the environment: that value is replaced.
    A cache folder that cannot be written (a read-only home) leaves Inductor's default in place,
    with a warning naming the folder: the cache only saves time, the run need not fail for it.
    """
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if chosen is None or os.path.abspath(chosen) == os.path.abspath(default_cache_dir()):
        ours = cache_folder() / "inductor"
        try:
            ours.mkdir(parents=True, exist_ok=True)
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(ours)
        except OSError as error:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = default_cache_dir()
            log.warning("compile: cannot write the compile cache %s (%s): compiling with %s, which is not kept; "
                        "set %s to a writable folder", error.filename or ours, error.strerror,
                        os.environ["TORCHINDUCTOR_CACHE_DIR"], CACHE_VARIABLE)
    return os.environ["TORCHINDUCTOR_CACHE_DIR"]


@dataclass
class Estimate:
    """What is known about this model on this device: seconds per step, and the last compile's seconds."""

    eager_step_s: Optional[float] = None
    compiled_step_s: Optional[float] = None
    compile_s: Optional[float] = None


@dataclass
class Decision:
    compile: bool
    reason: str  # the numbers behind it: dlrun.log and summary.json
    says: str = ""  # the same in a sentence a learner reads on the console (decide() always says it)


def decide(planned_steps: int, estimate: Estimate) -> Decision:
    """Whether compiling pays for `planned_steps` more training steps.

    With a measured compiled step time: when the saving over the planned steps exceeds the compile
    cost (the last measured one, so a warm cache counts) by MARGIN. Without one: only when the
    compile, at its measured or assumed cost, is at most MAX_UNMEASURED_SHARE of the eager run, so
    trying costs little; that run then measures the saving for the next ones.
    """
    if estimate.eager_step_s is None:
        return Decision(False, "no eager step time measured yet for this model (the first epoch measures it)",
                        "skipped — this run measures how long a step takes; later runs of this model decide from it")
    eager_run = planned_steps * estimate.eager_step_s
    cost = estimate.compile_s if estimate.compile_s is not None else UNMEASURED_COMPILE_S
    cost_text = f"{'measured' if estimate.compile_s is not None else 'assumed'} compile {cost:.1f} s"
    compile_words = f"{'a ' if estimate.compile_s is not None else 'a ~'}{_seconds(cost)} compile"
    if estimate.compiled_step_s is None:
        share = cost / eager_run if eager_run > 0 else float("inf")
        verdict = share <= MAX_UNMEASURED_SHARE
        return Decision(verdict, f"{planned_steps} steps x {1e3 * estimate.eager_step_s:.2f} ms eager = "
                                 f"{eager_run:.3g} s; {cost_text} is {100 * share:.1f} % of it "
                                 f"({'<=' if verdict else '>'} {100 * MAX_UNMEASURED_SHARE:.0f} % with no "
                                 "compiled step measured yet)",
                        f"on — this run is long enough to repay {compile_words}" if verdict
                        else f"skipped — this run is too short to repay {compile_words}")
    saving = planned_steps * (estimate.eager_step_s - estimate.compiled_step_s)
    verdict = saving >= MARGIN * cost
    if verdict:
        says = f"on — it saves about {_seconds(saving)} over this run, against {compile_words}"
    elif saving > 0:
        says = f"skipped — it would save about {_seconds(saving)} over this run, too little for {compile_words}"
    else:
        says = "skipped — the compiled model was not faster than the plain one here"
    return Decision(verdict, f"{planned_steps} steps x ({1e3 * estimate.eager_step_s:.2f} - "
                             f"{1e3 * estimate.compiled_step_s:.2f}) ms saves {saving:.3g} s against {cost_text}"
                             f" ({'pays' if verdict else 'does not pay'} with a {MARGIN}x margin)", says)


def _seconds(seconds: float) -> str:
    """A duration rounded to what matters: `40 s`, `2.5 s`, `0.05 s`, `3 min`."""
    if seconds >= 120:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.2g} s"


def steps_to_pay(estimate: Estimate) -> Optional[float]:
    """The run length (training steps) from which compiling pays, or None if it never does."""
    if estimate.eager_step_s is None or estimate.compiled_step_s is None or estimate.compile_s is None:
        return None
    saving = estimate.eager_step_s - estimate.compiled_step_s
    return MARGIN * estimate.compile_s / saving if saving > 0 else None


class StepTimes:
    """`step_times.json` in the cache folder: an Estimate per workload signature."""

    def __init__(self, folder: Optional[Path] = None) -> None:
        self.path = (folder or cache_folder()) / STATS_FILE

    def read(self) -> dict[str, dict[str, Any]]:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):  # none yet, or unreadable: measure again
            return {}

    def estimate(self, signature: str) -> Estimate:
        entry = self.read().get(signature, {})
        return Estimate(entry.get("eager_step_s"), entry.get("compiled_step_s"), entry.get("compile_s"))

    def update(self, signature: str, **values: float) -> None:
        entries = self.read()
        entries.setdefault(signature, {}).update(values)
        atomic_write(self.path, lambda temporary: temporary.write_text(json.dumps(entries, indent=1, sort_keys=True)))


class CompileSwitch(nn.Module):
    """The module the training loop calls: `model` eagerly, or compiled for training once decided.

    `policy` is "auto" (decide per `decide`) or True (compile from the first step). The weights
    are `model`'s own; checkpoints save `model`, never this wrapper.
    """

    def __init__(self, model: nn.Module, policy: Union[str, bool], mode: str, settings: str) -> None:
        super().__init__()
        self.model = model
        self.policy, self.mode = policy, mode
        self.settings = settings  # device, amp, memory format, threads: what step times depend on
        self.times = StepTimes()
        self.decision: Optional[Decision] = None
        self.compile_seconds = 0.0  # in this process, all compiles together
        self.compile_cache = ""  # "cold" or "warm": whether this signature was compiled here before
        self._compiled: Optional[Any] = None  # kept out of the module tree (see before_epoch)
        self._signature: Optional[str] = None
        self._shapes: set[tuple[Any, ...]] = set()
        self._compiled_steps = 0

    def __getattr__(self, name: str) -> Any:
        """The model's own attributes (layers, methods a task calls) read through the wrapper."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("model"), name)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.training and self._compiled is not None:
            return self._compiled(*args, **kwargs)
        return self.model(*args, **kwargs)

    # --- called by train.train_one_epoch -------------------------------------------------------
    def before_epoch(self, loader: Any, remaining_steps: int) -> None:
        """Decide (until compiling) whether to compile for the `remaining_steps` of the run over `loader`."""
        if self._signature is None:
            # The training loader's example goes through its augmentation: draw it on a forked RNG, so
            # deciding takes none of the run's random numbers (an exact resume depends on them).
            cuda_devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
            with torch.random.fork_rng(devices=cuda_devices):
                example = loader.example_input()
            batch_shape = (loader.batch_size, *example.shape[1:])
            self._signature = _signature(self.model, batch_shape, self.settings, self.mode)
        if self._compiled is not None:
            return
        estimate = self.times.estimate(self._signature)
        if self.policy is True:
            decision = Decision(True, "device.compile=true")
        else:
            decision = decide(remaining_steps, estimate)
            if self.decision is None or decision.compile:  # the first decision, and a change to yes
                log.info("compile: %s", decision.says)
                details.info("compile: %s: %s", "yes" if decision.compile else "no", decision.reason)
        self.decision = decision
        if self.decision.compile:
            use_inductor_cache()
            self.compile_cache = "warm" if estimate.compile_s is not None else "cold"
            started = time.perf_counter()  # the first torch.compile imports Dynamo and Inductor: seconds
            # Set through __dict__: as a submodule it would put a second copy of the weights in state_dict().
            self.__dict__["_compiled"] = torch.compile(self.model, mode=self.mode)
            self.compile_seconds += time.perf_counter() - started

    def compiles_on(self, inputs: Any) -> bool:
        """Whether this training step will compile: a compiled model meeting a new batch shape."""
        if self._compiled is None or not isinstance(inputs, torch.Tensor):
            return False
        shape = tuple(inputs.shape)
        if shape in self._shapes:
            return False
        self._shapes.add(shape)
        return True

    def compiled_step(self, seconds: float) -> None:
        """A step that compiled took `seconds` (its compute is a negligible part)."""
        first = not self._compiled_steps
        self._compiled_steps += 1
        self.compile_seconds += seconds
        if first:  # with the setup before the first step
            log.info("compiled in %.1f s (%s Inductor cache in %s)", self.compile_seconds, self.compile_cache,
                     os.environ.get("TORCHINDUCTOR_CACHE_DIR"))
        else:
            log.info("recompiled for a new batch shape in %.1f s", seconds)

    def after_epoch(self, steps: int, seconds: float) -> None:
        """`steps` steps took `seconds` of training, compile steps excluded: record the step time."""
        if steps < MIN_RECORDED_STEPS or self._signature is None:
            return
        values = {"compiled_step_s" if self._compiled is not None else "eager_step_s": seconds / steps}
        if self._compiled is not None and self.compile_seconds > 0:
            values["compile_s"] = self.compile_seconds
        try:
            self.times.update(self._signature, **values)
        except OSError as error:  # a read-only cache costs only the next run's estimate
            log.warning("could not record step times in %s: %s", self.times.path, error)

    def report(self) -> dict[str, Any]:
        """What summary.json says about compiling."""
        return {"policy": self.policy, "compiled": self._compiled is not None,
                "reason": self.decision.reason if self.decision else "not decided (no training step ran)",
                "compile_s": self.compile_seconds, "cache": self.compile_cache or None,
                "cache_dir": os.environ.get("TORCHINDUCTOR_CACHE_DIR") if self._compiled is not None else None}


def compile_seconds(net: nn.Module) -> float:
    """Seconds spent compiling `net` so far in this process (0 for a plain module)."""
    return net.compile_seconds if isinstance(net, CompileSwitch) else 0.0


def compile_report(net: nn.Module) -> Optional[dict[str, Any]]:
    return net.report() if isinstance(net, CompileSwitch) else None


def _signature(model: nn.Module, inputs_shape: tuple[int, ...], settings: str, mode: str) -> str:
    """What a step's time depends on: the architecture (its repr), batch shape, device settings, torch."""
    architecture = hashlib.sha256(repr(model).encode()).hexdigest()[:12]
    return (f"{type(model).__name__}-{architecture} {list(inputs_shape)} {settings} mode={mode} "
            f"torch={torch.__version__}")
