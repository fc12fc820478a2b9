"""In a real terminal tools/distill.py shows live tqdm bars (driven here through a pseudo-terminal)."""
import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time

from conftest import DISTILL_BASE, ROOT


def run_in_pty(cmd: list[str], timeout: float = 600, cols: int = 100) -> tuple[int, str]:
    """Run cmd with a pseudo-terminal (cols x 24) as its stdin/stdout/stderr; return (exit code, all output)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, cols, 0, 0))
    proc = subprocess.Popen(cmd, cwd=ROOT, stdin=slave, stdout=slave, stderr=slave, close_fds=True,
                            env={**os.environ, "TERM": "xterm"})
    os.close(slave)
    chunks, deadline = [], time.time() + timeout
    try:
        while time.time() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    return proc.wait(), b"".join(chunks).decode(errors="replace")


def test_distill_draws_a_live_bar_in_a_terminal(shapes_small, tmp_path):
    base = list(DISTILL_BASE)
    base[base.index("--progress") + 1] = "auto"
    base[base.index("--batch-size") + 1] = "4"  # 20 steps: room for several redraws
    rc, out = run_in_pty([sys.executable, "tools/distill.py", "--data-dir", str(shapes_small["classification"]),
                          *base, "--model", "resnet10t", "--epochs", "1", "--output", str(tmp_path),
                          "--experiment", "bar"])
    assert rc == 0, out[-3000:]
    # tqdm redraws its line in place: carriage returns, each followed by the bar at a later step
    steps = [int(n) for n in re.findall(r"\repoch 1/1:\s+\d+%\|[^\r\n|]*\|\s*(\d+)/\d+", out)]
    assert len(steps) >= 3 and len(set(steps)) >= 3 and max(steps) > 0, out[-3000:]
    assert steps == sorted(steps)
    assert "epoch 1/1 [" not in out  # not the plain log lines of --progress log
