"""The paper's claims a study can speak to, each read from a paired 95 % interval over seeds, and the checks
that say whether the miniature is fit to speak (its students converged, its data axis matters, its teacher
leaves room).

Sign convention of Fig. 1 (the official repository's fig/data_scale_bar.png): the gap of a method is that
method's top-1 minus vanilla KD's, so a positive gap is a lead over KD.
"""
from __future__ import annotations

import statistics

from .stats import claim, finite_or_none, t_interval

DEFAULT_MARGIN = 1.0  # points of top-1 within which "KD matches X" holds, unless the spec's claims: margin says
OTHERS = ("dkd", "dist")


def _by_seed(records: list[dict], key: str = "top1", **flt: object) -> dict[int, float]:
    return {r["seed"]: r[key] for r in records if key in r and all(r.get(k) == v for k, v in flt.items())}


def _diff(records: list[dict], a: dict, b: dict, key: str = "top1", scale: float = 1.0) -> list[float]:
    ra, rb = _by_seed(records, key, **a), _by_seed(records, key, **b)
    return [scale * (ra[s] - rb[s]) for s in sorted(set(ra) & set(rb))]


def _fmt(c: dict, unit: str = " points") -> str:
    if c["ci95"][0] is None:
        return f"{c['estimate']:+.2f}{unit} (one seed: no interval)" if c["n_seeds"] else "not measured"
    return f"{c['estimate']:+.2f}{unit}, 95 % CI [{c['ci95'][0]:+.2f}, {c['ci95'][1]:+.2f}] over {c['n_seeds']} seeds"


def _finish(c: dict, unit: str = " points") -> dict:
    c["sentence"] = f"{c['sentence']}: {_fmt(c, unit)}; the miniature {_says(c)}."
    return c


def _says(c: dict) -> str:
    v = c["verdict"]
    if v == "inconclusive":
        return "is inconclusive (the interval " + ("straddles zero)" if c["kind"] == "difference" else
                                                   f"crosses the ±{c['margin']:g} margin)")
    return {"not measured": "does not measure it"}.get(v, v)


def fig1_gaps(records: list[dict], student: str) -> list[dict]:
    """Per fraction and method: the gap over KD with its interval (the bars of Fig. 1)."""
    rows = []
    main = [r for r in records if r.get("variant", "main") == "main" and r["student"] == student]
    for f in sorted({r["fraction"] for r in main}):
        for o in OTHERS:
            diffs = _diff(main, dict(method=o, fraction=f), dict(method="kd", fraction=f))
            if diffs:
                mean, low, high = t_interval(diffs)
                rows.append({"fraction": f, "method": o, "gap": mean, "n_seeds": len(diffs),
                             "ci95": [finite_or_none(low), finite_or_none(high)]})  # null: one seed, no interval
    return rows


def distill_claims(records: list[dict], student: str, margin: float, arms: dict, recipes: dict,
                   label: str) -> list[dict]:
    main = [r for r in records if r.get("variant", "main") == "main" and r["student"] == student]
    fractions = sorted({r["fraction"] for r in main})
    methods = {r["method"] for r in main}
    out: list[dict] = []
    if not fractions:
        return out
    f0, fn = fractions[0], fractions[-1]
    if {"kd", "scratch"} <= methods:
        for f in dict.fromkeys((f0, fn)):
            out.append(_finish(claim(
                f"kd_beats_scratch@{f:g}", f"Distillation helps (a KD student beats the same recipe without a "
                f"teacher): {student} KD - scratch top-1 at fraction {f:g}", "difference",
                _diff(main, dict(method="kd", fraction=f), dict(method="scratch", fraction=f)),
                student=student, fraction=f)))
    for o in (o for o in OTHERS if o in methods and "kd" in methods):
        name = o.upper()
        g0 = _diff(main, dict(method=o, fraction=f0), dict(method="kd", fraction=f0))
        gn = _diff(main, dict(method=o, fraction=fn), dict(method="kd", fraction=fn))
        if len(fractions) > 1:
            out.append(_finish(claim(
                f"{o}_leads_kd_on_small_data", f"Fig. 1 (small-data pitfall: {name} leads vanilla KD when data is "
                f"scarce): {name} - KD top-1 at fraction {f0:g}", "difference", g0, student=student, fraction=f0)))
            inter = [a - b for a, b in zip(g0, gn)] if len(g0) == len(gn) else []
            out.append(_finish(claim(
                f"{o}_gap_shrinks_with_data", f"Fig. 1 (the lead of {name} over KD shrinks as data grows): "
                f"gap ({name} - KD) at fraction {f0:g} minus the gap at {fn:g}", "difference", inter,
                student=student, fractions=[f0, fn])))
        out.append(_finish(claim(
            f"kd_matches_{o}_at_full_data", f"Fig. 1 and Table 3 (with enough data, vanilla KD matches {name} within "
            f"±{margin:g} point): {name} - KD top-1 at fraction {fn:g}", "equivalence", gn, margin,
            student=student, fraction=fn)))
    if arms:
        fa = float(arms["fraction"])
        if "bkd" in methods:
            out.append(_finish(claim(
                "kd_beats_bkd", f"Table 4 (binary KL is worse than the KL of vanilla KD): KD - BKD top-1 at "
                f"fraction {fa:g}", "difference",
                _diff(main, dict(method="kd", fraction=fa), dict(method="bkd", fraction=fa)), student=student, fraction=fa)))
        if "kd_nohard" in methods:
            out.append(_finish(claim(
                "hard_label_matters_little", f"Table 4 (with KD, the hard-label loss changes little, within "
                f"±{margin:g} point): KD - KD without hard label, top-1 at fraction {fa:g}", "equivalence",
                _diff(main, dict(method="kd", fraction=fa), dict(method="kd_nohard", fraction=fa)), margin,
                student=student, fraction=fa)))
        if "lskd" in methods:
            out.append(_finish(claim(
                "lskd_beats_kd", f"LS-KD (Sun et al. 2024, not a claim of this paper: z-scored logits improve KD): "
                f"LS-KD - KD top-1 at fraction {fa:g}", "difference",
                _diff(main, dict(method="lskd", fraction=fa), dict(method="kd", fraction=fa)), student=student,
                fraction=fa)))
    for rname, rec in recipes.items():
        fr = float(rec["fraction"])
        weak = [r for r in records if r.get("variant") == rname and r["student"] == student]
        for o in (o for o in OTHERS if o in {r["method"] for r in weak} and o in methods):
            g_weak = _diff(weak, dict(method=o, fraction=fr), dict(method="kd", fraction=fr))
            g_strong = _diff(main, dict(method=o, fraction=fr), dict(method="kd", fraction=fr))
            both = sorted(set(_by_seed(weak, method=o, fraction=fr)) & set(_by_seed(main, method=o, fraction=fr)))
            inter = [a - b for a, b in zip(g_weak, g_strong)] if len(g_weak) == len(g_strong) == len(both) else []
            out.append(_finish(claim(
                f"{o}_gap_shrinks_with_recipe", f"Table 1a (a stronger recipe narrows the lead of {o.upper()} over "
                f"KD): gap ({o.upper()} - KD) under the {rname} recipe minus under the {label} one, fraction {fr:g}",
                "difference", inter, student=student, fraction=fr, recipes=[rname, label])))
    return out


def detection_claims(records: list[dict]) -> list[dict]:
    out = []
    for run in sorted({r["run"] for r in records}):
        inits = {r["init"] for r in records if r["run"] == run}
        if {"kd", "supervised"} <= inits:
            for key, label in (("bbox_mAP", "box"), ("segm_mAP", "mask")):
                out.append(_finish(claim(
                    f"kd_backbone_transfers_better_{label}", f"Table 11 (a distilled backbone gives higher {label} "
                    f"AP than a supervised one; +3.6 box / +3.0 mask AP for Mask R-CNN R50 1x on COCO): {run} KD - "
                    f"supervised {label} AP x 100", "difference",
                    _diff(records, dict(run=run, init="kd"), dict(run=run, init="supervised"), key, 100.0), run=run),
                    unit=""))
        if {"kd", "random"} <= inits:
            out.append(_finish(claim(
                "pretraining_matters", f"Sanity check, not a claim of the paper (a pretrained backbone beats a random "
                f"one): {run} KD - random box AP x 100", "difference",
                _diff(records, dict(run=run, init="kd"), dict(run=run, init="random"), "bbox_mAP", 100.0), run=run),
                unit=""))
    return out


def checks(records: dict, spec: dict) -> list[dict]:
    """The design criteria, measured in this run: convergence, a data axis, room for the teacher."""
    d = records["distill"]
    design = spec.get("claims") or {}
    out = []
    for stu in sorted({r["student"] for r in d}):
        main = [r for r in d if r.get("variant", "main") == "main" and r["student"] == stu]
        fractions = sorted({r["fraction"] for r in main})
        if not fractions:
            continue
        long = [r for r in d if r.get("variant") == "long" and r["student"] == stu and r["method"] == "scratch"]
        if long:
            fl = long[0]["fraction"]
            diffs = _diff(d, dict(variant="long", method="scratch", fraction=fl, student=stu),
                          dict(variant="main", method="scratch", fraction=fl, student=stu))
            mean = statistics.fmean(diffs) if diffs else float("nan")
            limit = float(design.get("convergence_points", 1.0))
            out.append({"id": "convergence", "value": mean, "threshold": limit, "met": bool(diffs) and abs(mean) < limit,
                        "n_seeds": len(diffs), "sentence": (
                f"convergence: scratch at fraction {fl:g} with {long[0].get('steps_factor', 2)}x the steps minus "
                f"scratch at the study's steps: {mean:+.2f} points over {len(diffs)} seeds (must be within "
                f"±{limit:g})")})
        scratch = {f: [r["top1"] for r in main if r["method"] == "scratch" and r["fraction"] == f] for f in fractions}
        if len(fractions) > 1 and scratch[fractions[0]] and scratch[fractions[-1]]:
            gain = statistics.fmean(scratch[fractions[-1]]) - statistics.fmean(scratch[fractions[0]])
            limit = float(design.get("data_axis_points", 5.0))
            out.append({"id": "data_axis", "value": gain, "threshold": limit, "met": gain >= limit, "sentence": (
                f"data axis: scratch gains {gain:+.2f} points from fraction {fractions[0]:g} to {fractions[-1]:g} "
                f"(must be at least {limit:g})")})
        teacher = records.get("teacher_top1")
        means = [statistics.fmean(v) for v in _group(main).values()]
        if teacher is not None and means:
            room = teacher - max(means)
            limit = float(design.get("teacher_room_points", 5.0))
            out.append({"id": "teacher_room", "value": room, "threshold": limit, "met": room >= limit, "sentence": (
                f"room for the teacher: teacher {teacher:.2f} % minus the best student's mean {max(means):.2f} % = "
                f"{room:+.2f} points (must be at least {limit:g})")})
    return out


def _group(records: list[dict]) -> dict[tuple, list[float]]:
    g: dict[tuple, list[float]] = {}
    for r in records:
        g.setdefault((r["method"], r["fraction"]), []).append(r["top1"])
    return g


def all_claims(records: dict, spec: dict) -> list[dict]:
    dist = spec.get("distill") or {}
    margin = float((spec.get("claims") or {}).get("margin", DEFAULT_MARGIN))
    label = str(dist.get("recipe_label", "study's"))
    out = []
    for stu in sorted({r["student"] for r in records["distill"]}):
        out += distill_claims(records["distill"], stu, margin, dist.get("arms") or {}, dist.get("recipes") or {},
                              label)
    return out + detection_claims(records["detection"])
