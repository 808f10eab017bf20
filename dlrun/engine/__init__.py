"""The engine: the training step and evaluation pass, what they are built from (optimizers, schedulers,
precision, compile, the device) and what the processes of a run share."""
