#!/usr/bin/env python
"""Write the built-in synthetic "shapes" data: an ImageFolder set and a COCO-format instance set.

--world shapes (default): 12 classes, six shape families filled or outlined (shapes/generate.py).
--world groups: 32 classes with structure, 8 shape families x 4 fill textures (shapes/groups.py); its COCO set
is the default world's. Size flags left out take the world's defaults.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from shapes.generate import ShapesSpec, make_shapes  # noqa: E402
from shapes.groups import GroupsSpec, make_groups  # noqa: E402

WORLDS = {"shapes": (ShapesSpec, make_shapes), "groups": (GroupsSpec, make_groups)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="data/shapes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--world", choices=sorted(WORLDS), default="shapes", help="which world (default: shapes)")
    fields = list(ShapesSpec.__dataclass_fields__)
    for f in fields:
        p.add_argument("--" + f.replace("_", "-"), type=int, default=None,
                       help=f"default: {ShapesSpec().__getattribute__(f)} (shapes), {GroupsSpec().__getattribute__(f)} (groups)")
    a = p.parse_args(argv)
    spec_cls, make = WORLDS[a.world]
    spec = spec_cls(**{f: getattr(a, f) for f in fields if getattr(a, f) is not None})
    for k, v in make(a.out, spec, a.seed).items():
        print(f"{k}: {v}")


if __name__ == "__main__":
    main()
