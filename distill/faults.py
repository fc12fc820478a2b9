"""The one line a distillation ends with when its surroundings fail it: a full disk (which file, the free space, the
checkpoint that is intact, how to go on) and a lost rank (which one, where it was). A stop by a signal is
common/signals.py's; the checkpoints themselves are written atomically (common/io.py), so what is on disk stays whole.
"""
from __future__ import annotations

import re

from common.diskfull import DiskFull, as_disk_full
from common.errors import Stopped, UserError

from .heartbeat import Heartbeat, heartbeat_store
from .run_setup import Run


def checkpoint_line(run: Run) -> str:
    """What --resume would continue from, as the fault lines say it."""
    pos = run.saved
    if pos is None or not run.ckpt_path.is_file():
        return "no checkpoint was written yet: run the command again"
    where = f"epoch {pos.epoch + 1}, step {pos.step} of {run.steps_per_epoch}" if pos.step else \
        f"after epoch {pos.epoch}"
    return f"the last checkpoint {run.ckpt_path} ({where}) is intact: continue with the same command and --resume"


def start_heartbeat(run: Run) -> Heartbeat | None:
    """Under torchrun (or several Slurm tasks): this rank's beat and the watch over the others'."""
    if not run.info.distributed:
        return None
    timeout = run.args.dist_timeout
    store = heartbeat_store(min(timeout, 30.0))
    if store is None:
        return None
    def line(lost: list[int], where: dict[int, str]) -> str:
        return _lost_line(run, lost, where, f"no sign of life for {timeout:g} s, --dist-timeout")
    return Heartbeat(store, run.info.rank, run.info.world_size, timeout, describe=line).start()


def explain_failure(run: Run, e: BaseException) -> UserError | None:
    """The one-line error for a full disk or a lost rank behind ``e``; None when ``e`` is neither."""
    if isinstance(e, (UserError, Stopped)) and not isinstance(e, DiskFull):
        return None
    full = as_disk_full(e, run.out_root)
    if full is not None:
        return full.explain(intact=checkpoint_line(run))
    hb = run.heartbeat
    if hb is None or not isinstance(e, RuntimeError):
        return None
    hb.ending = True  # this thread ends the process now; the watchdog stays quiet
    found = hb.lost()
    why = _first_line(e)
    if found is None:
        return UserError(f"the job's store stopped answering, so rank 0 (or torchrun, which holds it) was lost "
                         f"({why}); {checkpoint_line(run)}")
    gone, where = found
    if gone:
        return UserError(_lost_line(run, gone, where, why))
    if "timed out" in why.lower() or "timeout" in why.lower():
        return UserError(f"a collective timed out although every rank is alive ({why}); {checkpoint_line(run)}")
    return None


def _lost_line(run: Run, gone: list[int], where: dict[int, str], why: str) -> str:
    ranks = ", ".join(f"rank {r} of {run.info.world_size}" + (f" (last seen at {where[r]})" if where.get(r) else "")
                      for r in gone)
    here = run.heartbeat.where if run.heartbeat is not None and run.heartbeat.where else ""
    return (f"{ranks} {'was' if len(gone) == 1 else 'were'} lost ({why}); this is rank {run.info.rank}"
            f"{f', at {here}' if here else ''}; {checkpoint_line(run)}")


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    line = lines[0] if lines else type(e).__name__
    line = re.sub(r"^\[[^\]]*\]\s*", "", line)  # gloo's "[.../pair.cc:538] Connection closed by peer ..."
    return line.split(". ")[0][:200]
