"""dlrun's fused launcher for Hydra: `dlrun -m hydra/launcher=fused ...` (see dlrun.run.fused_sweep)."""
