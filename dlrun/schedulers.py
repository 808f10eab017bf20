"""Kept where saved configs name it: `scheduler._target_: dlrun.schedulers.warmup_cosine`.

Runs and checkpoints made before the package was laid out in wings carry this path, and the
shipped scheduler YAML keeps it so that their config fingerprints stay the same (a resumed run is
recognised as the same run). The scheduler lives in dlrun.engine.schedulers.
"""

from dlrun.engine.schedulers import warmup_cosine

__all__ = ["warmup_cosine"]
