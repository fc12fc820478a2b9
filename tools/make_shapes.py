#!/usr/bin/env python
"""Write the built-in synthetic "shapes" data: an ImageFolder set and a COCO-format instance set.

--world shapes (default): 12 classes, six shape families filled or outlined (shapes/generate.py).
--world groups: 32 classes with structure, 8 shape families x 4 fill textures (shapes/groups.py); its COCO set
is the default world's. Size flags left out take the world's defaults.

--format folder tar parquet wds: the classification set also in other containers, with the same image bytes
(shapes/containers.py; docs/data.md): OUT/classification-tar/{train,val}.tar, OUT/classification-parquet (the hub's
parquet layout: --dataset hfds/OUT/classification-parquet), OUT/classification-wds (shards and timm's _info.json:
--dataset wds/shapes --data-dir OUT/classification-wds). The class folders are always written (the bytes' source).
"""
import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from shapes.containers import FORMATS, write_containers  # noqa: E402
from shapes.generate import ShapesSpec, make_shapes  # noqa: E402
from shapes.groups import GroupsSpec, make_groups  # noqa: E402

WORLDS = {"shapes": (ShapesSpec, make_shapes), "groups": (GroupsSpec, make_groups)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="data/shapes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--world", choices=sorted(WORLDS), default="shapes", help="which world (default: shapes)")
    p.add_argument("--format", nargs="+", choices=FORMATS, default=["folder"],
                   help="the containers of the classification set (default: folder; see docs/data.md)")
    fields = list(ShapesSpec.__dataclass_fields__)
    for f in fields:
        p.add_argument("--" + f.replace("_", "-"), type=int, default=None,
                       help=f"default: {ShapesSpec().__getattribute__(f)} (shapes), {GroupsSpec().__getattribute__(f)} (groups)")
    a = p.parse_args(argv)
    spec_cls, make = WORLDS[a.world]
    spec = spec_cls(**{f: getattr(a, f) for f in fields if getattr(a, f) is not None})
    out = make(a.out, spec, a.seed)
    tag = ",".join(sorted(p.name for p in Path(a.out).glob(".done-*")))  # the world's stamp: rewritten with it
    for fmt, path in write_containers(out["classification"], a.out, a.format, name=a.world, tag=tag).items():
        out[f"classification-{fmt}"] = path
    for k, v in out.items():
        print(f"{k}: {v}")


if __name__ == "__main__":
    main()
