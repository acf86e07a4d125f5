"""Stopping a training run cleanly on Ctrl-C or SIGTERM (what ``ray job stop``, a container
stop or a batch scheduler sends): the workers write a checkpoint of the step they are at and
return, then the driver marks the run KILLED and says how to resume it.

The driver runs ``fit()`` in a thread (:func:`interruptible`) and turns SIGTERM into
:class:`Terminated`, a ``KeyboardInterrupt``. On the first signal it sets the run's
:class:`StopFlag` (a Ray actor that rank 0 asks before every step, :func:`stop_requested`)
and waits up to ``IICNET_STOP_GRACE_S`` seconds (default :data:`GRACE_S`) for the workers
to checkpoint and return; a second signal, or the end of the wait, stops at once (the
newest periodic checkpoint is then the one to resume from).

The workers use the same flag to stop a run themselves (:func:`give_up`): a checkpoint that
does not fit on its disk would fail again after every restart, so rank 0 sets the flag with
the reason and the driver, finding it set after ``fit()`` (:func:`given_up`), exits 2 with it.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

GRACE_S = 120.0
"""How long the driver waits, after the first signal, for the workers' stop checkpoint."""


class GaveUp(RuntimeError):
    """The workers stopped the run themselves; the message is their reason."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised on the driver's main thread like Ctrl-C's KeyboardInterrupt."""


def exit_status(interrupt: KeyboardInterrupt) -> int:
    """128 + the signal's number: 143 for SIGTERM, 130 for Ctrl-C."""
    return 128 + (signal.SIGTERM if isinstance(interrupt, Terminated) else signal.SIGINT)


def what(interrupt: KeyboardInterrupt) -> str:
    return "terminated (SIGTERM)" if isinstance(interrupt, Terminated) else "interrupted"


def on_sigterm() -> None:
    """Raise :class:`Terminated` on the main thread when SIGTERM arrives. Called after Ray
    has started in this process: Ray installs a handler of its own that aborts the process
    (exit 134) without a word."""
    def raise_terminated(signum: int, frame: Any) -> None:
        raise Terminated()

    signal.signal(signal.SIGTERM, raise_terminated)


def make_flag():
    """A new :class:`StopFlag` actor (needs no CPU) of this driver's Ray job."""
    import ray

    return ray.remote(num_cpus=0)(StopFlag).remote()


class StopFlag:
    """Whether the driver asked the workers to stop (the body of a Ray actor)."""

    def __init__(self) -> None:
        self.asked = False
        self.reason: str | None = None

    def ask(self, reason: str | None = None) -> None:
        self.asked = True
        self.reason = self.reason or reason

    def requested(self) -> bool:
        return self.asked

    def why(self) -> str | None:
        return self.reason


def stop_requested(flag, timeout_s: float = 10.0) -> bool:
    """Whether ``flag`` (a :class:`StopFlag` actor handle, or None) is set; False when the
    actor does not answer within ``timeout_s`` (the driver is then going down anyway)."""
    if flag is None:
        return False
    import ray

    try:
        return bool(ray.get(flag.requested.remote(), timeout=timeout_s))
    except Exception:  # a gone or unreachable driver: halted() handles that
        return False


def give_up(flag, reason: str) -> bool:
    """Ask the workers to stop before the next step because of ``reason`` (they write no
    stop checkpoint); False when there is no flag (a sweep's trial)."""
    if flag is None:
        return False
    flag.ask.remote(reason)
    return True


def given_up(flag, timeout_s: float = 10.0) -> str | None:
    """The reason the workers gave for stopping the run (:func:`give_up`), or None."""
    if flag is None:
        return None
    import ray

    try:
        return ray.get(flag.why.remote(), timeout=timeout_s)
    except Exception:  # a gone actor: nobody gave up through it
        return None


def interruptible(call: Callable[[], Any], flag=None) -> Any:
    """``call()`` in a thread, so that Ctrl-C (and SIGTERM, :func:`on_sigterm`) reach this
    process's main thread as KeyboardInterrupt.

    On the main thread Ray Train installs a SIGINT handler of its own; when Ctrl-C has also
    reached Ray's processes (a terminal signals the whole process group) the handler finds
    its controller gone and exits with status 1 and no word, so the driver could neither
    mark the run nor say how to resume it. Ray does not install it off the main thread.

    With ``flag``, the first signal sets it and waits (see the module docstring) for
    ``call()`` to return; the signal's exception is raised then, with ``stopped_cleanly``
    saying whether the workers returned (after their stop checkpoint)."""
    outcome: dict[str, Any] = {}
    # Waited on through an Event: a signal's exception that interrupts Thread.join() can
    # leave is_alive() False for a thread that still runs (CPython 3.11).
    done = threading.Event()

    def target() -> None:
        try:
            outcome["result"] = call()
        except BaseException as exc:  # handed to the main thread as it is
            outcome["error"] = exc
        finally:
            done.set()

    thread = threading.Thread(target=target, name="ray-train-fit", daemon=True)
    thread.start()
    interrupt: KeyboardInterrupt | None = None
    deadline = 0.0
    while not done.is_set():
        try:
            done.wait(0.5)
        except KeyboardInterrupt as exc:
            if interrupt is not None or flag is None:
                exc.stopped_cleanly = False  # type: ignore[attr-defined]
                raise
            interrupt = exc
            grace = float(os.environ.get("IICNET_STOP_GRACE_S") or GRACE_S)
            deadline = time.monotonic() + grace
            print(f"\n{what(exc)}: the workers checkpoint the step they are at, then stop "
                  f"(waiting up to {grace:.0f} s; Ctrl-C again stops at once)",
                  file=sys.stderr, flush=True)
            try:
                flag.ask.remote()
            except Exception:  # Ray going down already: stop at once
                deadline = 0.0
        if interrupt is not None and time.monotonic() > deadline:
            interrupt.stopped_cleanly = False  # type: ignore[attr-defined]
            raise interrupt
    if interrupt is not None:
        interrupt.stopped_cleanly = "error" not in outcome  # type: ignore[attr-defined]
        raise interrupt
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]
