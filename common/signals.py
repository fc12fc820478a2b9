"""SIGTERM and SIGINT during a training run: finish the step under way, save where the run is, exit with one line.

Why: Slurm (on scancel, preemption or the time limit), Kubernetes and torchrun end a job with SIGTERM and kill it
30 s later; a Ctrl-C is SIGINT. Dying at once would lose everything since the last checkpoint. The handler only
records the signal; the loop asks after every step (``agreed``), and under torchrun every rank takes the answer of
an all-reduce (``reduce_max``), so all of them stop after the same step even when only one was signalled. A second
Ctrl-C stops at once (the last checkpoint on disk stays intact). Used by tools/distill.py (distill/engine.py) and
tools/transfer.py (transfer/hooks.py).

DataLoader worker processes are forked after ``install`` and inherit the handler, so a signal sent to the whole
process group (a terminal's Ctrl-C, Slurm's SIGTERM) leaves them serving batches until the main process stops.
"""
from __future__ import annotations

import signal
import threading
from collections.abc import Callable

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """The signal that asked the run to stop (``signum``, 0 while none), recorded by the installed handlers."""

    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict[int, object] = {}

    def install(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():  # Python delivers signals to the main thread
            for s in STOP_SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def uninstall(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        if self.signum and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.signum = self.signum or signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def agreed(self, reduce_max: Callable[[float], float] | None = None) -> int:
        """The signal any rank received (0: none). With ``reduce_max`` (an all-reduce over the ranks) every rank gets
        the same answer, so all stop after the same step."""
        if reduce_max is not None:
            self.signum = int(reduce_max(float(self.signum)))
        return self.signum


class StopNow(Exception):
    """Raised inside an epoch (during validation) once a stop was asked for: the epoch is saved where it is."""
