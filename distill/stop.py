"""SIGTERM and SIGINT during a run: finish the step under way, save exactly where the run is, exit with one line.

Why: Slurm (on scancel, preemption or the time limit), Kubernetes and torchrun end a job with SIGTERM and kill it
30 s later; a Ctrl-C is SIGINT. Dying at once would lose everything since the last epoch's checkpoint. The handler
only records the signal; the loop asks after every step (``agreed``), and under torchrun every rank takes the answer
of an all-reduce, so all of them stop after the same step even when only one was signalled. A second Ctrl-C stops at
once (the last checkpoint on disk stays intact).

DataLoader worker processes are forked after ``install`` and inherit the handler, so a signal sent to the whole
process group (a terminal's Ctrl-C, Slurm's SIGTERM) leaves them serving batches until the main process stops.
"""
from __future__ import annotations

import signal
import threading

from . import distributed as D

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

    def agreed(self, distributed: bool) -> int:
        """The signal any rank received (0: none). Every rank gets the same answer, so all stop at the same step."""
        if distributed:
            self.signum = int(D.all_reduce_max(float(self.signum)))
        return self.signum


class StopNow(Exception):
    """Raised inside the epoch (during validation) when a stop was agreed: the epoch is saved where it is."""
