"""Files a run writes besides the model and metrics: status.json, samples.jsonl, report.html.

None of them changes training; rendering the report never fails a run (a warning says why it was not
written, and ``sftlab report RUN`` can make it later).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path

from sftlab.config import Config
from sftlab.console import warn

log = logging.getLogger(__name__)


def write_status(out: Path, state: str) -> None:
    """``status.json``: the run's state (running | stopped | done) and the process writing it, atomically."""
    record = {"state": state, "pid": os.getpid(), "host": socket.gethostname(), "time": round(time.time(), 3)}
    tmp = out / "status.json.tmp"
    tmp.write_text(json.dumps(record) + "\n", encoding="utf-8")
    os.replace(tmp, out / "status.json")


def can_generate_on_main(accelerator) -> bool:
    """Whether the main process alone can run the whole model (not with FSDP / DeepSpeed sharding, where a
    forward pass needs every process)."""
    from accelerate.utils import DistributedType

    return accelerator.is_main_process and accelerator.distributed_type not in (
        DistributedType.FSDP,
        DistributedType.DEEPSPEED,
    )


class Samples:
    """Generations on the first ``eval.samples`` held-out records: ``before(model)`` ahead of training,
    ``after(model, out)`` once trained (writes ``samples.jsonl``). Inactive without held-out records."""

    def __init__(self, cfg: Config, tokenizer, eval_ds, enabled: bool = True):
        from sftlab.eval.samples import pick_sample_prompts

        self.cfg, self.tokenizer = cfg, tokenizer
        self.prompts = pick_sample_prompts(eval_ds, cfg.eval.samples) if enabled else []
        self.texts_before: list[str] = []

    def before(self, model, device=None) -> None:
        from sftlab.eval.samples import generate_samples

        if not self.prompts:
            return
        if device is not None and not self.cfg.lora.load_in_4bit:  # generate where training will run
            model.to(device)
        self.texts_before = generate_samples(model, self.tokenizer, self.prompts, self.cfg.eval.sample_max_new_tokens)

    def after(self, model, out: Path) -> Path | None:
        from sftlab.eval.samples import generate_samples, sample_records

        if not self.prompts:
            return None
        after = generate_samples(model, self.tokenizer, self.prompts, self.cfg.eval.sample_max_new_tokens)
        before = self.texts_before or [""] * len(after)
        rows = sample_records(self.tokenizer, self.prompts, before, after)
        path = out / "samples.jsonl"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        os.replace(tmp, path)
        return path


def write_report_or_warn(out: Path) -> Path | None:
    """``OUTPUT/report.html``; on any failure a warning instead (the run itself has succeeded)."""
    from sftlab.report.html import write_report

    try:
        return write_report([out])
    except Exception as e:  # noqa: BLE001 - a report must never fail a finished run
        warn(f"report.html not written ({type(e).__name__}: {e}); try again with: sftlab report {out}")
        log.debug("report failed", exc_info=True)
        return None
