"""Where a run reports: the console, TensorBoard and metrics.jsonl, the HPARAMS record, curves and plots."""
