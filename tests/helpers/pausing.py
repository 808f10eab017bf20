"""dlrun's MLP, able to pause at chosen points until the test lets it go: signals at exact moments.

`DLRUN_TEST_PAUSE` lists pause points, comma-separated: `setup` (in the constructor, before
training), `train:<n>` / `eval:<n>` (the n-th training / evaluation forward pass of this
process; the model summary is evaluation pass 1), `save:<n>` (the n-th `state_dict()` call,
i.e. inside the n-th checkpoint save). At a point the model writes
`$DLRUN_TEST_PAUSE_DIR/paused-<point>` (holding its pid) and waits for `go-<point>`. Each
point pauses once per directory, so a requeued process (same environment) does not pause again.
In a run on several processes, `DLRUN_TEST_PAUSE_RANK` names the one that pauses (torchrun's RANK).
Without the variables it is the plain MLP: same weights, same results.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from dlrun.models.mlp import MLP

WAIT_S = 120  # a generous bound: the test signals as soon as it sees the marker


def pause_if(point: str) -> None:
    if point not in os.environ.get("DLRUN_TEST_PAUSE", "").split(","):
        return
    if os.environ.get("DLRUN_TEST_PAUSE_RANK", os.environ.get("RANK")) != os.environ.get("RANK"):
        return
    folder = Path(os.environ["DLRUN_TEST_PAUSE_DIR"])
    marker, go = folder / f"paused-{point}", folder / f"go-{point}"
    if marker.exists():
        return
    partial = folder / f".paused-{point}"
    partial.write_text(str(os.getpid()))
    partial.rename(marker)  # the test reads the pid as soon as the marker exists
    deadline = time.monotonic() + WAIT_S
    while not go.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"nobody released pause point {point}")
        time.sleep(0.005)


class PausingMLP(MLP):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls = {"train": 0, "eval": 0, "save": 0}
        pause_if("setup")

    def forward(self, x):
        mode = "train" if self.training else "eval"
        self.calls[mode] += 1
        pause_if(f"{mode}:{self.calls[mode]}")
        return super().forward(x)

    def state_dict(self, *args, **kwargs):
        self.calls["save"] += 1
        pause_if(f"save:{self.calls['save']}")
        return super().state_dict(*args, **kwargs)
