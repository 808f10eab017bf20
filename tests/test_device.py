"""Device options reach the model and the loop; invalid combinations fail with one line."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest
import torch

from conftest import compose_config, read_json, run_cli
from dataset_files import write_cifar10
from dlrun.config import validate
from dlrun.data.build import build_data
from dlrun.engine.device import configure_backends, prepare_model
from dlrun.engine.precision import Precision
from dlrun.errors import ConfigError
from dlrun.models import build_model
from dlrun.train import run

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def restore_backends():
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    benchmark, cublas = torch.backends.cudnn.benchmark, os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.benchmark = benchmark
    if cublas is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


def first_conv_input(model: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """What the model's first convolution receives when the model is called on `inputs`."""
    seen = []
    conv = next(module for module in model.modules() if isinstance(module, torch.nn.Conv2d))
    handle = conv.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    model(inputs)
    handle.remove()
    return seen[0]


@pytest.mark.parametrize("setting,expected", [("auto", True), ("true", True), ("false", False)])
def test_channels_last_on_the_cpu_reaches_weights_and_inputs(setting, expected):
    cfg = validate(compose_config("device=cpu", f"device.channels_last={setting}", "debug=smoke"))
    model = build_model(cfg.model)
    prepare_model(model, cfg.device)
    second_conv = [module for module in model.modules() if isinstance(module, torch.nn.Conv2d)][1]
    assert second_conv.weight.is_contiguous() is not expected  # 6 input channels: the two layouts differ
    # One-channel inputs are the same in both layouts: the colour test below sees their conversion.
    assert bool(model._forward_pre_hooks) is expected


def test_channels_last_auto_leaves_models_without_convolutions_alone():
    cfg = validate(compose_config("device=cpu", "model=mlp", "debug=smoke"))
    model = build_model(cfg.model)
    prepare_model(model, cfg.device)
    assert not model._forward_pre_hooks


def test_channels_last_survives_augmentation_of_colour_images(tmp_path):
    # With one channel NCHW and NHWC coincide; three channels tell them apart.
    write_cifar10(tmp_path, per_batch=4)
    cfg = validate(compose_config("device=cpu", "regularization.augment=flip_crop", "model=lenet",
                                  "dataset=cifar10", f"dataset.root={tmp_path}", "dataset.download=false",
                                  "trainer.batch_size=4"))
    model = build_model(cfg.model)
    prepare_model(model, cfg.device)
    data = build_data(cfg, torch.device("cpu"), torch.Generator().manual_seed(0))
    for loader in (data.train, data.val):
        inputs, _ = next(iter(loader))
        seen = first_conv_input(model, inputs)
        assert seen.shape[1] == 3
        assert seen.is_contiguous(memory_format=torch.channels_last)
        assert not seen.is_contiguous()


def test_bf16_autocast_on_cpu_and_a_run_completes(cfg_for, tmp_path):
    precision = Precision("bf16", torch.device("cpu"))
    with precision.autocast():
        assert torch.nn.Linear(4, 2)(torch.ones(1, 4)).dtype == torch.bfloat16
    assert precision.scaler is None
    summary = run(cfg_for("device=cpu", "device.amp=bf16", "device.channels_last=true", "debug=smoke"),
                  run_dir=tmp_path / "run")
    assert read_json(tmp_path / "run" / "status.json")["status"] == "completed"
    assert summary["test"]["test/loss"] == summary["test"]["test/loss"]  # not NaN


def test_amp_off_is_plain_float32():
    with Precision("off", torch.device("cpu")).autocast():
        assert torch.nn.Linear(4, 2)(torch.ones(1, 4)).dtype == torch.float32


def test_deterministic_and_threads_are_applied(restore_backends):
    configure_backends(validate(compose_config("device.deterministic=true", "device.num_threads=1")).device)
    assert torch.are_deterministic_algorithms_enabled()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert torch.backends.cudnn.benchmark is False
    assert torch.get_num_threads() == 1


@pytest.mark.slow
def test_compiled_training_saves_plain_weights(cfg_for, tmp_path):
    run(cfg_for("model=mlp", "device=cpu", "device.compile=true", "debug=smoke"), run_dir=tmp_path / "run")
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert not any(key.startswith("_orig_mod.") for key in state["model"])  # loads into an eager model
    build_model(validate(compose_config("model=mlp")).model).load_state_dict(state["model"])


@pytest.mark.parametrize("override,message", [
    ("device.amp=fp8", "device.amp='fp8' is not one of: off, bf16, fp16"),
    ("device.compile_mode=fast", "device.compile_mode='fast' is not one of: default, reduce-overhead"),
])
def test_unknown_option_values(override, message):
    with pytest.raises(ConfigError) as error:
        validate(compose_config(override))
    assert message in str(error.value)


def test_fp16_on_cpu_is_a_clear_error(tmp_path):
    result = run_cli("device=cpu", "device.amp=fp16", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == ("dlrun: error: device.amp=fp16 needs a CUDA device; "
                                     "on the CPU use device.amp=bf16 or off")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_gpu_is_a_clear_error(tmp_path):
    result = run_cli("device=cuda", cwd=tmp_path)
    assert result.returncode == 2
    assert "device=cuda but no CUDA GPU is available here" in result.stderr


@needs_cuda
def test_fp16_checkpoint_resumes_with_the_scaler_state(cfg_for, tmp_path):
    common = ("device=cuda", "device.amp=fp16", "model=mlp", "trainer.limit_batches=5")
    run(cfg_for(*common, "trainer.epochs=1"), run_dir=tmp_path / "first")
    saved = torch.load(tmp_path / "first" / "checkpoints" / "last.pt", weights_only=True)["grad_scaler"]
    assert saved["scale"] > 0 and saved["_growth_tracker"] >= 0
    restored = Precision("fp16", torch.device("cuda"))
    restored.load_state_dict(saved)
    assert restored.state_dict() == saved
    run(cfg_for(*common, "trainer.epochs=2", f"trainer.resume={tmp_path / 'first'}"), run_dir=tmp_path / "second")
    assert read_json(tmp_path / "second" / "summary.json")["epochs_completed"] == 2


# Six 16 MiB tensors allocated and freed, as a training step does with activations and gradients:
# prints the MiB still resident after the first free, and the page faults a settled step takes.
ALLOCATING_STEPS = """
import resource, sys, torch
from dlrun.engine.host_memory import use_host_allocator
use_host_allocator(sys.argv[1])
def resident_mb():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20
def step():
    tensors = [torch.ones(2**22) for _ in range(6)]
    del tensors
before = resident_mb()
step()
kept_mb = resident_mb() - before
for _ in range(3):  # the heap settles in a step or two
    step()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(kept_mb, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / 10)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="tunes glibc's allocator")
def test_tuned_host_allocator_keeps_freed_memory_for_the_next_step():
    def after_steps(allocator: str) -> tuple[float, float]:
        result = subprocess.run([sys.executable, "-c", ALLOCATING_STEPS, allocator], capture_output=True, text=True,
                                timeout=120, check=True)
        kept_mb, faults_per_step = map(float, result.stdout.split()[-2:])
        return kept_mb, faults_per_step

    kept_mb, _ = after_steps("system")
    assert kept_mb < 20  # glibc's defaults give the 96 MiB back to the system at once
    kept_mb, faults_per_step = after_steps("tuned")
    assert kept_mb > 90 and faults_per_step < 1  # kept, and the next steps reuse it without a page fault


def test_configure_backends_applies_the_host_allocator_setting(monkeypatch, restore_backends):
    chosen = []
    monkeypatch.setattr("dlrun.engine.device.use_host_allocator", chosen.append)
    configure_backends(validate(compose_config("device.host_allocator=system")).device)
    configure_backends(validate(compose_config()).device)
    assert chosen == ["system", "tuned"]
