"""Fault injection for the fault-tolerance tests, driven by the ``SFTLAB_FAULTS`` environment variable.

``SFTLAB_FAULTS="nan_at_step=3,sleep_after_step=2:5.0,kill_in_checkpoint=4,nan_every_step"``
- ``nan_at_step=K``: the loss of step K (1-based) becomes NaN; ``nan_from_step=K``: from step K on;
  ``nan_every_step``: every step's.
- ``sleep_after_step=K:S``: sleep S seconds after step K (a window for an external SIGKILL).
- ``kill_in_checkpoint=K``: SIGKILL this process half-way through writing checkpoint K.
- ``disk_full_in_checkpoint=K`` / ``disk_full_in_final``: writing checkpoint K / ``final/`` fails half-way
  as a full disk does (``OSError`` ENOSPC).
Unset (the normal case), every hook is a no-op.
"""

from __future__ import annotations

import errno
import os
import signal
import time


class Faults:
    def __init__(self, spec: str | None = None):
        spec = os.environ.get("SFTLAB_FAULTS", "") if spec is None else spec
        self.opts: dict[str, str] = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            key, _, value = part.partition("=")
            self.opts[key] = value

    def loss(self, step: int, loss):
        from_step = int(self.opts.get("nan_from_step", 0) or 0)
        if "nan_every_step" in self.opts or self.opts.get("nan_at_step") == str(step) or 0 < from_step <= step:
            return loss * float("nan")
        return loss

    def after_step(self, step: int) -> None:
        at, _, seconds = self.opts.get("sleep_after_step", "").partition(":")
        if at == str(step):
            time.sleep(float(seconds or 5))

    def during_checkpoint(self, step: int) -> None:
        if self.opts.get("kill_in_checkpoint") == str(step):
            os.kill(os.getpid(), signal.SIGKILL)
        if self.opts.get("disk_full_in_checkpoint") == str(step):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def during_final(self) -> None:
        if "disk_full_in_final" in self.opts:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
