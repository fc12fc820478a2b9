"""common/jobs.py, the one runner of our tools: this interpreter for `python`/`torchrun`, the log, the thread
count set for the child, the structured result and the one failure type (small real processes, no torch)."""
import pickle
import sys

import pytest

from common.errors import UserError
from common.jobs import JobFailed, Running, check, error_line, run, tool_argv


def test_tool_argv_uses_this_interpreter():
    assert tool_argv(["python", "tools/distill.py", "-h"]) == [sys.executable, "tools/distill.py", "-h"]
    assert tool_argv(["torchrun", "--nproc_per_node", "2", "tools/distill.py"]) == \
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "tools/distill.py"]
    assert tool_argv([sys.executable, "x.py"]) == [sys.executable, "x.py"]


def test_failed_tool_is_one_job_failed_with_its_last_line(tmp_path):
    log = tmp_path / "logs" / "summarize.log"
    res = run(["python", "tools/summarize.py", str(tmp_path / "nowhere")], log, header="$ summarize\n")
    assert res.returncode == 2 and res.seconds > 0 and res.log == log
    assert res.last_line == f"error: not a directory: {tmp_path / 'nowhere'}"
    assert log.read_text().startswith("$ summarize\n")
    with pytest.raises(JobFailed) as e:
        check(res, "summarize/x", label="study job")
    assert isinstance(e.value, UserError) and e.value.returncode == 2 and e.value.log == log
    assert str(e.value) == f"study job summarize/x failed (exit 2): {res.last_line} (log: {log})"
    again = pickle.loads(pickle.dumps(e.value))  # submitit sends a task's exception back pickled
    assert str(again) == str(e.value) and again.job_id == "summarize/x"
    assert error_line("noise\nTraceback\nValueError: bad\nmore") == "ValueError: bad"


def test_threads_are_set_and_output_streams_to_log_and_terminal(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "7")  # set for the child, never inherited
    code = "import os; print(os.environ['OMP_NUM_THREADS'], os.environ['MKL_NUM_THREADS'], os.environ['X'])"
    res = run(["python", "-c", code], tmp_path / "t.log", prefix="    ", output="stream", threads=3,
              env={"X": "y"})
    assert check(res, "t") is res and res.last_line == "3 3 y"
    assert "    3 3 y" in capsys.readouterr().out
    r = Running(["python", "-c", "import time; time.sleep(30)"], tmp_path / "stop.log")
    r.stop(grace=5)
    assert r.poll() is not None and r.wait().returncode != 0
