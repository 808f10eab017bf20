"""A run from start to end: its attempts, resuming, the run directory and status.json, checkpoints and
when they are written, stop signals, K-fold, the processes of a run, and the sweep leaderboard."""
