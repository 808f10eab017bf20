"""A training run from its config: one attempt at the run, then build → fit → test.

`run(cfg)` is what the CLI calls and what tests call with a config from Hydra's compose API:
it begins an attempt (dlrun.run.attempt: validation, processes, which directory it writes and
whether it continues a run there), trains once or fold by fold (dlrun.run.kfold), and records
how the attempt ended. `train` is one training run: `build_training` (dlrun.engine.setup),
`fit` (epochs of train → validate → log → save) and `test` (the best epoch's weights on the
test split), then summary.json. When last.pt is written and how a stop signal is honoured is
dlrun.run.save_points'; one run on several processes (torchrun, Slurm) is dlrun.engine.distributed's:
there `ranks` shares out the batches, adds up the metrics, and rank 0 alone writes the run directory.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Optional

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from dlrun.atomic import claim_directory, write_json
from dlrun.data.card import write_card
from dlrun.engine.compiling import compile_seconds
from dlrun.engine.device import describe_threads
from dlrun.engine.distributed import Ranks
from dlrun.engine.loop import evaluate, train_one_epoch
from dlrun.engine.position import EpochPosition, TrainingProgress
from dlrun.engine.setup import Training, build_training
from dlrun.models.summary import ModelSummary, summarize_model
from dlrun.report import console, hparams
from dlrun.report.curves import write_run_curves
from dlrun.report.metrics_log import MetricsLog, NoMetricsLog
from dlrun.run import attempt as attempts
from dlrun.run import checkpoint, kfold
from dlrun.run.attempt import Attempt, job_number, planned_epochs
from dlrun.run.run_dir import SUMMARY_FILE
from dlrun.run.run_summary import run_summary
from dlrun.run.save_points import SavePoints, SaveSchedule
from dlrun.run.status import RunStatus
from dlrun.run.stop_signals import StopSignals

log = logging.getLogger("dlrun")


def run(cfg: DictConfig, run_dir: str | Path | None = None, validated: Optional[DictConfig] = None) -> dict[str, Any]:
    """Validate `cfg`, train (or continue a run), test on the best checkpoint; return what summary.json holds.

    `run_dir` defaults to Hydra's output directory; continuing a run happens in that run's own
    directory instead (dlrun.run.resume). status.json tracks the outcome and the attempts; a
    failure is recorded there and re-raised for the caller. A stop signal ends the run after
    saving where it stands, with `stop_signals.Interrupted` (exit code 128 + the signal).

    On several processes every one of them calls it: rank 0 picks and writes the run directory
    (the others' `run_dir` is not used), and they stop together. A failure that not all of them
    met raises `errors.OutOfStep`, which ends the process (and a sweep).
    """
    run_dir = Path(run_dir) if run_dir is not None else _default_run_dir(cfg)
    with StopSignals() as stop:
        attempt = attempts.begin(cfg, run_dir, stop, validated)
        with attempt.recording(stop):
            summary = attempt.done if attempt.done is not None else _train_attempt(attempt, stop)
        signum = attempt.ranks.agree_now(stop.signum)
        if signum:  # too late to stop this run, but a sweep stops before its next job
            stop.adopt(signum)
            raise stop.interrupted(f"{stop.name} received as the run ended; the run is complete")
        return summary


def _train_attempt(attempt: Attempt, stop: StopSignals) -> dict[str, Any]:
    """The attempt's training: the run once, or fold by fold (trainer.kfold), from where the plan says."""
    if attempt.cfg.trainer.kfold:
        return _train_folds(attempt, stop)
    return train(attempt.cfg, attempt.run_dir, resume_from=attempt.plan.checkpoint, in_place=attempt.plan.in_place,
                 stop=stop, status=attempt.status, ranks=attempt.ranks)


def _train_folds(attempt: Attempt, stop: StopSignals) -> dict[str, Any]:
    """trainer.kfold: every fold that is not complete yet, each a training run of its own; their summary.
    With trainer.kfold_refit, then one run on every training row for the folds' mean best epoch count."""
    started = time.perf_counter()
    cfg, writes = attempt.cfg, attempt.ranks.is_main

    def trained(fold: kfold.Fold, fold_cfg: DictConfig = cfg) -> dict[str, Any]:
        return fold.completed or train(fold_cfg, fold.directory, fold=fold.index, resume_from=fold.checkpoint,
                                       in_place=fold.checkpoint is not None, stop=stop, status=attempt.status,
                                       ranks=attempt.ranks)

    summaries = [trained(fold) for fold in kfold.folds(cfg.trainer.kfold, attempt.run_dir, planned_epochs(cfg),
                                                        attempt.plan.in_place, writes)]
    combined = kfold.combine(summaries, attempt.run_dir, time.perf_counter() - started, writes)
    if not cfg.trainer.kfold_refit:
        return combined
    refit_cfg = kfold.refit_config(cfg, summaries)
    refit = trained(kfold.refit_fold(attempt.run_dir, planned_epochs(refit_cfg), attempt.plan.in_place, writes),
                    refit_cfg)
    return kfold.add_refit(combined, refit, attempt.run_dir, time.perf_counter() - started, writes)


def train(cfg: DictConfig, run_dir: Path, fold: Optional[int] = None, resume_from: Optional[Path] = None,
          in_place: bool = False, stop: Optional[StopSignals] = None,
          status: Optional[RunStatus] = None, ranks: Ranks = Ranks()) -> dict[str, Any]:
    """One training run in `run_dir`; with `fold`, validation is that fold of trainer.kfold (dlrun.run.kfold).

    `resume_from` is a checkpoint to continue from; `in_place` says it belongs to this run, whose
    metrics.jsonl lines and TensorBoard steps after it are then dropped. `stop` is polled for stop
    signals (never, when None); `status` records where this attempt started. `ranks`: the
    processes of the run (one by default); only rank 0 writes into `run_dir`.
    """
    started = time.perf_counter()
    stop = stop if stop is not None else StopSignals()  # not entered: never requested
    training = build_training(cfg, planned_epochs(cfg), fold, ranks, job_number())
    if ranks.is_main:  # data.json: what evaluation, prediction and export read
        write_card(run_dir, cfg, training.data.task, training.data.extras)
    progress = TrainingProgress()
    if resume_from is not None:
        progress = _resume(training, resume_from, run_dir / "checkpoints", status)
    if resume_from is None or not progress.own_rng_restored:
        ranks.seed_own_streams(cfg.seed, progress.global_step)  # dropout of its own on each process
    training.trainer.net = ranks.wrap(training.net, training.device)  # DDP: gradients averaged in backward
    model_summary = _show_start(training, run_dir, cfg.trainer.batch_size)

    continue_from = (progress.epoch, progress.metrics_lines) if in_place and resume_from is not None else None
    metrics_log = (MetricsLog(run_dir, overlay=("loss", training.trainer.task.metric), continue_from=continue_from)
                   if ranks.is_main else NoMetricsLog())
    with metrics_log:

        def snapshot(position: Optional[EpochPosition], rng: Optional[dict[str, Any]]) -> dict[str, Any]:
            return checkpoint.training_state(cfg, training, progress, position, rng, metrics_lines=metrics_log.lines,
                                             elapsed_s=progress.elapsed_s + time.perf_counter() - started)

        save_points = SavePoints(run_dir / "checkpoints", snapshot,
                                 SaveSchedule(cfg.trainer.save_every_steps, cfg.trainer.save_every_minutes), stop,
                                 training.shuffle_generator, where=kfold.where(fold),
                                 ranks=ranks, carried=training.trainer.task.carried_state)
        fit(training, progress, save_points, metrics_log, cfg.regularization.early_stopping)
        test_metrics = test(training, progress, save_points, run_dir)
        results = {**test_metrics, training.monitor.replace("/", "/best_"): _or_nan(progress.best_value),
                   "run/epochs": progress.epoch, "run/duration_s": progress.elapsed_s + time.perf_counter() - started}
        # The run's results, logged as scalars so the HPARAMS tab can show them next to the hparams.
        metrics_log.write(progress.epoch, results)
        if ranks.is_main:
            hparams.write_hparams(metrics_log.writer, hparams.run_hparams(cfg), results)
    summary = run_summary(cfg, training, progress, test_metrics, results["run/duration_s"], model_summary)
    if ranks.is_main:
        write_json(run_dir / SUMMARY_FILE, summary)
        write_run_curves(run_dir, training.trainer.task.metric)  # curves.png
    console.show_results(_results_rows(progress.history, test_metrics), run_dir)
    return summary


def fit(training: Training, progress: TrainingProgress, save_points: SavePoints, metrics_log: MetricsLog,
        patience: int) -> None:
    """Epochs of train → validate → log → save, from where `progress` stands to the last planned epoch
    (or until `patience` epochs pass without a better monitored metric; 0 = never)."""
    trainer, data, ranks = training.trainer, training.data, training.trainer.ranks
    first_epoch = progress.epoch + 1 if progress.stopped_early is None else trainer.epochs + 1
    for epoch in range(first_epoch, trainer.epochs + 1):
        position = progress.position or EpochPosition.start(epoch, data.train, progress.global_step, training.device)
        progress.position = None
        save_points.before_steps(position)
        compiled_before = compile_seconds(training.net)
        train_metrics = train_one_epoch(trainer, data.train, position, on_step=save_points.after_step)
        compile_s = compile_seconds(training.net) - compiled_before  # reported apart: throughput excludes it
        training_seconds = position.seconds_so_far() - compile_s  # train_one_epoch ends with a host sync
        save_points.start_validation(position)
        ranks.sync_buffers(training.model)  # every process validates with rank 0's BatchNorm statistics
        val_metrics = (evaluate(training.net, data.val, trainer.task, trainer.precision,
                                on_batch=save_points.during_validation, ranks=ranks) if training.validating else {})
        examples_per_sec = data.train.num_examples / training_seconds
        history = {**_prefixed("train", train_metrics), **_prefixed("val", val_metrics),
                   "lr": trainer.optimizer.param_groups[0]["lr"],
                   "examples_per_sec": examples_per_sec, **trainer.task.speed_metrics(examples_per_sec),
                   "epoch_time_s": position.seconds_so_far(), **({"compile_s": compile_s} if compile_s else {})}
        if trainer.scheduler is not None and trainer.scheduler.interval == "epoch":
            trainer.scheduler.step(history)
        _log_epoch(training, metrics_log, epoch, history)
        improved = progress.record_epoch(epoch, history, position.global_step, training.monitor, trainer.task.mode)
        if patience > 0 and epoch - (progress.best_epoch or 0) >= patience:
            progress.stopped_early = epoch
        save_points.end_of_epoch(epoch, improved)  # last.pt (and best.pt); a pending stop signal stops here
        if progress.stopped_early is not None:
            log.info("early stopping after epoch %d: %s has not improved for %d epochs (best: epoch %s)",
                     epoch, training.monitor, patience, progress.best_epoch)
            break


def test(training: Training, progress: TrainingProgress, save_points: SavePoints, run_dir: Path) -> dict[str, float]:
    """The test split's metrics with the best epoch's weights (last.pt's when no epoch improved); none
    without a test split (dataset.test_fraction=0: every row trained)."""
    trainer, ranks = training.trainer, training.trainer.ranks
    if len(training.data.test) == 0:
        log.info("the test split is empty (dataset.test_fraction=0): every row trained, no test metrics")
        return {}
    best_path = save_points.directory / checkpoint.BEST
    if best_path.exists():  # every process reads rank 0's file
        training.model.load_state_dict(checkpoint.load_checkpoint(best_path, map_location=training.device)["model"])
    ranks.sync_buffers(training.model)
    metrics = _prefixed("test", evaluate(training.net, training.data.test, trainer.task, trainer.precision,
                                         on_batch=save_points.during_test, ranks=ranks))
    # e.g. multi-step forecasts and their figure: rank 0 writes, the others get its numbers
    metrics.update(ranks.from_main(lambda: trainer.task.after_test(training.net, run_dir)))
    return metrics


def _resume(training: Training, source: Path, checkpoints: Path, status: Optional[RunStatus]) -> TrainingProgress:
    """Load `source` into the training objects; the progress it holds, its mid-epoch position fitted to this run."""
    ranks = training.trainer.ranks
    progress = checkpoint.restore_training_state(source, training, checkpoints, ranks.rank)
    if progress.position is not None:
        train = training.data.train
        progress.position.check_fits(len(train), len(train.split), train.shuffle, source)
        progress.position = ranks.take_share(progress.position)
    where = progress.resume_point()
    log.info("resuming from %s (%s)", source, where["position"])
    if status is not None:
        status.continuing_from({"checkpoint": str(source), **where})
    if progress.epoch >= training.trainer.epochs or progress.stopped_early is not None:
        log.info("nothing left to train: the checkpoint is at epoch %d of %d; testing it",
                 progress.epoch, training.trainer.epochs)
    return progress


def _show_start(training: Training, run_dir: Path, batch_size: int) -> ModelSummary:
    """The config, the device and the model table; model_summary.txt in the run directory."""
    ranks = training.trainer.ranks
    # An example that is not augmented, so no random numbers are drawn here (an exact
    # resume depends on the RNG streams being untouched).
    summary = summarize_model(training.model, training.data.example_input())
    if ranks.is_main:
        with open(run_dir / "model_summary.txt", "w") as handle:
            console.Console(width=120, file=handle).print(summary.table())
    processes = f", {ranks.world} processes of batch {batch_size // ranks.world}" if ranks.distributed else ""
    device_line = f"{training.device}, {describe_threads()}{processes}"
    console.show_start(hparams.group_choices(), hparams.overrides(), device_line, summary.table())
    return summary


def _log_epoch(training: Training, metrics_log: MetricsLog, epoch: int, history: dict[str, float]) -> None:
    """The epoch's scalars, its line in the log, and (rank 0) the gradient norms and the task's texts and pictures."""
    trainer, is_main = training.trainer, training.trainer.ranks.is_main
    metrics_log.write(epoch, history)
    if trainer.grad_norms is not None and is_main:
        trainer.grad_norms.write(metrics_log.writer, epoch)
    log.info(console.epoch_line(epoch, trainer.epochs, history))
    for tag, text in (trainer.task.epoch_texts(training.model) if is_main else {}).items():
        metrics_log.write_text(tag, text, epoch)
    for tag, image in (trainer.task.epoch_images(training.model) if is_main else {}).items():
        metrics_log.write_image(tag, image, epoch)


def _prefixed(split: str, metrics: dict[str, float]) -> dict[str, float]:
    return {f"{split}/{name}": value for name, value in metrics.items()}


def _results_rows(history: dict[str, float], test: dict[str, float]) -> dict[str, dict[str, float]]:
    rows: dict[str, dict[str, float]] = {}
    for name, value in {**history, **test}.items():
        split, _, metric = name.partition("/")
        if metric:
            rows.setdefault(split, {})[metric] = value
    return rows


def _default_run_dir(cfg: DictConfig) -> Path:
    """Hydra's directory for this job; from code, a new `<output_root>/<date>/<time>[_<n>]` made here."""
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return claim_directory(Path(cfg.get("output_root", "outputs")) / time.strftime("%Y-%m-%d/%H-%M-%S"))


def _or_nan(value: Optional[float]) -> float:
    return float("nan") if value is None else value
