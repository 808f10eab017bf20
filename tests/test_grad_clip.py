"""regularization.grad_clip bounds the gradient norm the optimizer sees."""

from __future__ import annotations

import torch

from dlrun.train import run


def test_clipping_bounds_each_step(cfg_for, tmp_path, monkeypatch):
    norms = []
    original = torch.optim.SGD.step

    def recording_step(self, *args, **kwargs):
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        norms.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", recording_step)
    common = ("model=mlp", "optimizer=sgd", "optimizer.lr=1.0", "trainer.epochs=1", "trainer.limit_batches=5")
    run(cfg_for(*common, "regularization.grad_clip=0.01"), run_dir=tmp_path / "clipped")
    assert len(norms) == 5 and max(norms) <= 0.01 + 1e-6
    norms.clear()
    run(cfg_for(*common, "regularization.grad_clip=0"), run_dir=tmp_path / "unclipped")
    assert max(norms) > 0.01
