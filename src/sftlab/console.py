"""The one way a line reaches the user: ``say`` (a plain line), ``warn`` (a ``warning: ...`` line), ``show``
(a rich table, panel or styled line), ``error`` (why a command failed).

Only the main process speaks (``is_main_process``): in a run of N processes, every process runs the same code,
and one of them says what happened. ``error`` is the exception: a failure on any process must be seen.
Library details that are not a command's output go to ``logging.getLogger(__name__)`` instead.

Streams are looked up at call time (``sys.stdout`` / ``sys.stderr``), so pytest's ``capsys`` and
``contextlib.redirect_stdout`` see every line; this module imports nothing heavy until ``show`` is used.
"""

from __future__ import annotations

import os
import sys
from typing import IO, Any

_consoles: dict[tuple[bool, bool], tuple[IO[str], Any]] = {}


def is_main_process() -> bool:
    """Whether this process is the one that speaks (and writes run files): rank 0 of a distributed run, by
    accelerate's state once it is set up, else by the launcher's ``RANK`` (``LOCAL_RANK``); or the only one."""
    state = sys.modules.get("accelerate.state")  # only when accelerate is in use already: no import here
    if state is not None and state.PartialState._shared_state:
        return state.PartialState().is_main_process
    return os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) == "0"


def say(text: object = "", *, stderr: bool = False, end: str = "\n", flush: bool = False,
        file: IO[str] | None = None) -> None:
    """One plain line (``print``'s text) on stdout, or stderr; ``file``: a stream of the caller's own (chat's)."""
    if is_main_process():
        print(text, end=end, flush=flush, file=file or (sys.stderr if stderr else sys.stdout))


def warn(text: str, *, stderr: bool = False) -> None:
    """``warning: {text}`` on stdout, or stderr (each warning keeps the stream it has always had)."""
    say(f"warning: {text}", stderr=stderr)


def error(text: str) -> None:
    """Why a command failed, on stderr, from every process (a failure on one rank must not go unseen)."""
    print(text, file=sys.stderr)


def console(stderr: bool = False, **options: Any):
    """The shared rich ``Console`` of stdout (or stderr), made again when that stream was replaced (a test's
    capture); on a process that is not the main one, a quiet console that prints nothing. ``options`` (width,
    highlight, ...): a console of its own with those settings, for one command's output."""
    stream, quiet = (sys.stderr if stderr else sys.stdout), not is_main_process()
    if options:
        from rich.console import Console

        return Console(stderr=stderr, quiet=quiet, **options)
    cached = _consoles.get((stderr, quiet))
    if cached is None or cached[0] is not stream:
        from rich.console import Console

        cached = _consoles[stderr, quiet] = (stream, Console(stderr=stderr, quiet=quiet))
    return cached[1]


def show(*renderables: Any, stderr: bool = False, **kwargs: Any) -> None:
    """Rich output (a table, or a line with markup, highlighting and wrapping): ``Console.print`` on the shared
    console of stdout (or stderr), main process only."""
    console(stderr).print(*renderables, **kwargs)
