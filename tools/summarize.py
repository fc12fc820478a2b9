#!/usr/bin/env python
"""One markdown table of distillation runs (method, teacher, student, top-1) and detection runs
(detector, backbone, schedule, box AP, mask AP), gathered from run directories.

    python tools/summarize.py output work_dirs --out results.md
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# common.errors, not common.io: this tool starts without torch or timm (tests/test_tool_startup.py)
from common.errors import UserError, cli_main  # noqa: E402
import common.diskfull  # noqa: E402,F401  (registers the full-disk line with cli_main)


@cli_main
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dirs", nargs="+", help="folders holding distillation and/or detection runs (searched recursively)")
    p.add_argument("--out", default=None, help="also write the table to this file")
    a = p.parse_args(argv)
    for d in a.dirs:
        if not os.path.isdir(d):
            raise UserError(f"not a directory: {d}")
    from transfer.summarize import markdown
    table = markdown(a.dirs)
    print(table)
    if a.out:
        with open(a.out, "w") as f:
            f.write(table)
    return table


if __name__ == "__main__":
    main()
