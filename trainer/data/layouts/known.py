"""Category names of the real benchmarks, used to tell MVTec-like layouts apart.

MVTec AD, MPDD, GoodsAD and DTD-Synthetic share one directory structure; only their category
folders differ, so detection votes by these names.
"""

from __future__ import annotations

KNOWN_CATEGORIES: dict[str, frozenset[str]] = {
    "mvtec": frozenset({
        "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut", "pill",
        "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
    }),
    "mpdd": frozenset({"bracket_black", "bracket_brown", "bracket_white", "connector", "metal_plate", "tubes"}),
    "goodsad": frozenset({
        "cigarette_box", "drink_bottle", "drink_can", "food_bottle", "food_box", "food_package",
    }),
    "dtd": frozenset({
        "Blotchy_099", "Fibrous_183", "Marbled_078", "Matted_069", "Mesh_114", "Perforated_037",
        "Stratified_154", "Woven_001", "Woven_068", "Woven_104", "Woven_125", "Woven_127",
    }),
    "mvtec_loco": frozenset({"breakfast_box", "juice_bottle", "pushpins", "screw_bag", "splicing_connectors"}),
    "visa": frozenset({
        "candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2", "pcb1", "pcb2",
        "pcb3", "pcb4", "pipe_fryum",
    }),
}

#: Layouts whose on-disk structure is MVTec AD's.
MVTEC_LIKE = ("mvtec", "mpdd", "goodsad", "dtd")

#: Test folders of MVTec LOCO (its anomalies are split by kind, masks are folders of several PNGs).
LOCO_DEFECT_DIRS = frozenset({"logical_anomalies", "structural_anomalies"})
