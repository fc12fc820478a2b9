"""A lost rank ends the run within ``--dist-timeout`` with one line naming it, not after a collective's timeout.

Why: when a torchrun worker dies, gloo's collectives on the other ranks fail at once but do not say which rank went;
when a rank freezes (a stopped process, a lost node) or NCCL waits on a dead peer, the others wait in the collective
for the process group's timeout (30 min for gloo, 10 for NCCL). So every rank's process says it is alive through the
job's store every ``INTERVAL`` seconds (less often beyond 64 ranks), from a thread that runs whatever the main
thread is doing, with the step it is at. A collective that fails is explained by the ranks whose beats stopped (``lost``); a rank whose beat
has not moved for ``timeout`` seconds is lost, and the watchdog ends this process with the line itself (the main
thread may be blocked inside the collective). Checkpoints are written atomically, so the last one stays intact.
"""
from __future__ import annotations

import os
import sys
import threading
import time

INTERVAL = 2.0
KEY = "vanillakd/heartbeat/{}"
EXIT_CODE = 2


def heartbeat_store(timeout: float):
    """A client of the job's store of its own (torchrun's agent store, or rank 0's), whose calls give up after
    ``timeout`` seconds: a frozen store host must not freeze the watch, nor a short timeout touch torch's client."""
    import datetime

    import torch.distributed as dist

    from . import distributed as D
    addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if addr and port:
        try:
            return dist.TCPStore(addr, int(port), is_master=False, timeout=datetime.timedelta(seconds=timeout),
                                 wait_for_workers=False)
        except Exception:  # noqa: BLE001  (an unusual launcher: fall back to the process group's own store)
            pass
    return D.default_store()


class Heartbeat:
    """This rank's beat in ``store`` and the watch over the others' (``world`` ranks)."""

    def __init__(self, store, rank: int, world: int, timeout: float, describe=None):
        self.store, self.rank, self.world, self.timeout = store, rank, world, float(timeout)
        # every rank reads every beat: beyond 64 ranks, beats come less often, so the store's load stays flat
        self.interval = min(INTERVAL * max(1.0, world / 64), self.timeout / 3)
        self.where = ""  # the main thread's position ("epoch 2 step 5"), published with each beat
        # the watchdog's line, from the lost ranks and where each was
        self.describe = describe or (lambda lost, where: f"rank(s) {lost} stopped answering")
        self.ending = False  # the main thread is ending the process itself: the watchdog stays quiet
        self._beat = 0
        self._seen: dict[int, tuple[str, float]] = {}  # peer -> (last value, when it last changed)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vanillakd-heartbeat", daemon=True)

    def start(self) -> "Heartbeat":
        self._publish()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2 * self.interval)

    def _publish(self) -> None:
        self._beat += 1
        self.store.set(KEY.format(self.rank), f"{self._beat}|{self.where}")

    def _read(self) -> dict[int, str | None]:
        """Every peer's last beat (None: none yet), in two round trips to the store whatever the world size."""
        peers = [r for r in range(self.world) if r != self.rank]
        keys = [KEY.format(r) for r in peers]
        if self.store.check(keys):
            return {r: v.decode() for r, v in zip(peers, self.store.multi_get(keys))}
        return {r: (self.store.get(k).decode() if self.store.check([k]) else None) for r, k in zip(peers, keys)}

    def _update(self, now: float) -> list[int]:
        """Peers whose beat has not moved for ``timeout`` seconds."""
        for r, v in self._read().items():
            if r not in self._seen or self._seen[r][0] != v:
                self._seen[r] = (v, now)
        return [r for r, (_, t) in sorted(self._seen.items()) if now - t > self.timeout]

    def _run(self) -> None:
        start = time.monotonic()
        for r in range(self.world):
            if r != self.rank:
                self._seen[r] = ("", start)
        while not self._stop.wait(self.interval):
            try:
                self._publish()
                lost = self._update(time.monotonic())
            except Exception as e:  # noqa: BLE001  the store went away: its host (rank 0 or torchrun) ended
                lost, why = [0] if self.rank else [], f"the rendezvous store stopped answering ({_first(e)})"
                if not lost or self._stop.is_set():
                    continue
                self._end(f"{why}: rank 0 or the launcher that holds it is gone")
                return
            if lost and not self._stop.is_set():
                where = {r: (self._seen[r][0] or "|").split("|", 1)[-1] for r in lost}
                self._end(self.describe(lost, where))
                return

    def _end(self, line: str) -> None:
        if self.ending or self._stop.is_set():
            return
        sys.stdout.flush()
        print(f"error: {line}", file=sys.stderr, flush=True)
        os._exit(EXIT_CODE)  # the main thread may sit in a collective that waits for the lost rank

    def lost(self, wait: float | None = None) -> tuple[list[int], dict[int, str]] | None:
        """After a collective failed: the ranks whose beats stop moving within ``wait`` seconds (two beats), and
        where each peer was; None when the store itself is gone (its host, rank 0 or the launcher, ended)."""
        wait = 2 * self.interval + 1 if wait is None else wait
        try:
            first = self._read()
            time.sleep(wait)
            second = self._read()
        except Exception:  # noqa: BLE001
            return None
        gone = [r for r in sorted(second) if second[r] is None or second[r] == first[r]]
        where = {r: (v or "|").split("|", 1)[1] for r, v in second.items()}
        return gone, where


def _first(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:160] if text else type(e).__name__
