#!/usr/bin/env python
"""Write the built-in synthetic "shapes" data: an ImageFolder set and a COCO-format instance set."""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from shapes.generate import ShapesSpec, make_shapes  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="data/shapes")
    p.add_argument("--seed", type=int, default=0)
    d = ShapesSpec()
    for f in d.__dataclass_fields__:
        p.add_argument("--" + f.replace("_", "-"), type=int, default=getattr(d, f))
    a = p.parse_args(argv)
    spec = ShapesSpec(**{f: getattr(a, f) for f in d.__dataclass_fields__})
    for k, v in make_shapes(a.out, spec, a.seed).items():
        print(f"{k}: {v}")


if __name__ == "__main__":
    main()
