"""The signals that end a job on a cluster or in a container: SIGTERM (``docker stop``, SLURM's
time limit, preemption and ``scancel``, ``timeout``) and SIGHUP (the terminal or the ssh session
gone). Their default action kills the process on the spot, leaving its MLflow runs RUNNING and its
worker and sampling processes behind; :func:`install` turns them into a :class:`Terminated`
exception in the main thread, so that the code in flight unwinds like on Ctrl-C: every open run
ends KILLED with the signal as reason, what was measured is logged, the process exits 128+signal.

Only the first signal raises: a second one (SLURM and ``docker stop`` repeat theirs; a whole
process group gets one each) arrives while the first is being handled and is recorded, not
raised, so it cannot cut the logging of the first short. SIGKILL, which follows when the grace
period is over, cannot be handled: the runs it leaves RUNNING are reaped by the next job
(tracking.Tracker.reap_orphans, by pid on this host or by heartbeat age on any host).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

HANDLED = (signal.SIGTERM, signal.SIGHUP)

_received: int | None = None
_deferring = False
_pending: int | None = None


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived. A BaseException, like KeyboardInterrupt, so that handlers of
    ``Exception`` (a job's failure) do not swallow it."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"received {signal.Signals(signum).name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _handler(signum: int, frame: FrameType | None) -> None:
    global _received, _pending
    if _received is not None:  # already unwinding: let it finish
        return
    _received = signum
    if _deferring:
        _pending = signum
        return
    raise Terminated(signum)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold a SIGTERM/SIGHUP that arrives inside until the block is done, then raise it: the
    logging of a job's ending (its run's metrics and status) is not cut in half."""
    global _deferring, _pending
    _deferring = True
    try:
        yield
    finally:
        _deferring = False
        signum, _pending = _pending, None
        if signum is not None:
            raise Terminated(signum)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    global _received
    if _received is None:
        _received = signum
    raise KeyboardInterrupt


def install() -> bool:
    """Handle SIGTERM and SIGHUP (raise Terminated) and record SIGINT; False (nothing done)
    outside the main thread, where Python cannot set signal handlers."""
    if threading.current_thread() is not threading.main_thread():
        return False
    for signum in HANDLED:
        if signal.getsignal(signum) is not _handler:
            signal.signal(signum, _handler)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _interrupt)
    return True


def received() -> int | None:
    """The first ending signal this process received (SIGTERM, SIGHUP or SIGINT), if any."""
    return _received


def describe(signum: int) -> str:
    return f"killed by {signal.Signals(signum).name} (signal {signum})"


def exit_code(exc: BaseException) -> int | None:
    """128 + signal for an ending by signal (130 for Ctrl-C), None otherwise."""
    if isinstance(exc, Terminated):
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return 128 + signal.SIGINT
    return None
