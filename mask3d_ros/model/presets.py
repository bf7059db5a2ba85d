"""Settings that belong to one released Mask3D model family: labels, colour statistics, voxel size
and the official evaluation settings (query count, top-k, DBSCAN), from the authors' eval scripts.

Model class indices are what the network predicts (no-object excluded). The official code shifts
dataset labels by ``label_offset`` and drops ``filter_out_classes`` before training, so model
class ``c`` is dataset label ``label_ids[c]``.

ScanNet200's class ids and names are the benchmark's label table (raw ScanNet label ids, in the
benchmark's order). Its model classes follow the official remap: wall and floor are dropped, class 0
is chair and class ``c >= 1`` is table entry ``c + 2``; classes 198 and 199 are never supervised and
have no label (``exclude_classes``).

Known gaps, flagged on the preset rather than guessed:
* S3DIS (per test area) and STPLS3D colour statistics are computed by the official preprocessing
  and were never published; those presets carry the ScanNet statistics as a placeholder
  (``color_stats_known=False``). Pass the right ones to the segmenter when you have them.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from mask3d_ros.model.decoder import Mask3DConfig

SCANNET_COLOR_MEAN = (0.47793125906962, 0.4303257521323044, 0.3749598901421883)
SCANNET_COLOR_STD = (0.2834475483823543, 0.27566157565723015, 0.27018971370874995)

SCANNET20_IDS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39)
SCANNET20_NAMES = ("wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window",
                   "bookshelf", "picture", "counter", "desk", "curtain", "refrigerator", "shower curtain",
                   "toilet", "sink", "bathtub", "otherfurniture")
S3DIS_NAMES = ("ceiling", "floor", "wall", "beam", "column", "window", "door", "table", "chair", "sofa",
               "bookcase", "board", "clutter")
SCANNET200_IDS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 21, 22, 23, 24, 26, 27, 28, 29, 31,
                  32, 33, 34, 35, 36, 38, 39, 40, 41, 42, 44, 45, 46, 47, 48, 49, 50, 51, 52, 54, 55, 56, 57, 58, 59,
                  62, 63, 64, 65, 66, 67, 68, 69, 70, 71, 72, 73, 74, 75, 76, 77, 78, 79, 80, 82, 84, 86, 87, 88, 89,
                  90, 93, 95, 96, 97, 98, 99, 100, 101, 102, 103, 104, 105, 106, 107, 110, 112, 115, 116, 118, 120,
                  121, 122, 125, 128, 130, 131, 132, 134, 136, 138, 139, 140, 141, 145, 148, 154, 155, 156, 157, 159,
                  161, 163, 165, 166, 168, 169, 170, 177, 180, 185, 188, 191, 193, 195, 202, 208, 213, 214, 221, 229,
                  230, 232, 233, 242, 250, 261, 264, 276, 283, 286, 300, 304, 312, 323, 325, 331, 342, 356, 370, 392,
                  395, 399, 408, 417, 488, 540, 562, 570, 572, 581, 609, 748, 776, 1156, 1163, 1164, 1165, 1166,
                  1167, 1168, 1169, 1170, 1171, 1172, 1173, 1174, 1175, 1176, 1178, 1179, 1180, 1181, 1182, 1183,
                  1184, 1185, 1186, 1187, 1188, 1189, 1190, 1191)
SCANNET200_NAMES = ("wall", "chair", "floor", "table", "door", "couch", "cabinet", "shelf", "desk", "office chair",
                    "bed", "pillow", "sink", "picture", "window", "toilet", "bookshelf", "monitor", "curtain",
                    "book", "armchair", "coffee table", "box", "refrigerator", "lamp", "kitchen cabinet", "towel",
                    "clothes", "tv", "nightstand", "counter", "dresser", "stool", "cushion", "plant", "ceiling",
                    "bathtub", "end table", "dining table", "keyboard", "bag", "backpack", "toilet paper", "printer",
                    "tv stand", "whiteboard", "blanket", "shower curtain", "trash can", "closet", "stairs",
                    "microwave", "stove", "shoe", "computer tower", "bottle", "bin", "ottoman", "bench", "board",
                    "washing machine", "mirror", "copier", "basket", "sofa chair", "file cabinet", "fan", "laptop",
                    "shower", "paper", "person", "paper towel dispenser", "oven", "blinds", "rack", "plate",
                    "blackboard", "piano", "suitcase", "rail", "radiator", "recycling bin", "container", "wardrobe",
                    "soap dispenser", "telephone", "bucket", "clock", "stand", "light", "laundry basket", "pipe",
                    "clothes dryer", "guitar", "toilet paper holder", "seat", "speaker", "column", "bicycle",
                    "ladder", "bathroom stall", "shower wall", "cup", "jacket", "storage bin", "coffee maker",
                    "dishwasher", "paper towel roll", "machine", "mat", "windowsill", "bar", "toaster",
                    "bulletin board", "ironing board", "fireplace", "soap dish", "kitchen counter", "doorframe",
                    "toilet paper dispenser", "mini fridge", "fire extinguisher", "ball", "hat",
                    "shower curtain rod", "water cooler", "paper cutter", "tray", "shower door", "pillar", "ledge",
                    "toaster oven", "mouse", "toilet seat cover dispenser", "furniture", "cart", "storage container",
                    "scale", "tissue box", "light switch", "crate", "power outlet", "decoration", "sign",
                    "projector", "closet door", "vacuum cleaner", "candle", "plunger", "stuffed animal",
                    "headphones", "dish rack", "broom", "guitar case", "range hood", "dustpan", "hair dryer",
                    "water bottle", "handicap bar", "purse", "vent", "shower floor", "water pitcher", "mailbox",
                    "bowl", "paper bag", "alarm clock", "music stand", "projector screen", "divider",
                    "laundry detergent", "bathroom counter", "object", "bathroom vanity", "closet wall",
                    "laundry hamper", "bathroom stall door", "ceiling light", "trash bin", "dumbbell", "stair rail",
                    "tube", "bathroom cabinet", "cd case", "closet rod", "coffee kettle", "structure", "shower head",
                    "keyboard piano", "case of water bottles", "coat rack", "storage organizer", "folded chair",
                    "fire alarm", "power strip", "calendar", "poster", "potted plant", "luggage", "mattress")
STPLS3D_NAMES = ("ground", "Build", "LowVeg", "MediumVeg", "HighVeg", "Vehicle", "Truck", "Aircraft",
                 "MilitaryVeh", "Bike", "Motorcycle", "LightPole", "StreetSign", "Clutter", "Fence")


@dataclass(frozen=True)
class Preset:
    """Everything besides the weights needed to run one model family as its authors evaluated it."""

    name: str
    model: Mask3DConfig                  # architecture; model.num_queries = the eval query count
    class_names: tuple[str, ...]         # per model class index (K = model.num_classes - 1)
    label_ids: tuple[int, ...]           # dataset label id per model class index
    voxel_size: float                    # metres
    color_mean: tuple[float, float, float]
    color_std: tuple[float, float, float]
    topk: int                            # top-k (query, class) pairs; -1 = number of queries
    dbscan_eps: float | None             # metres; None = no DBSCAN splitting
    label_offset: int = 0                # training: dataset label - offset = model class
    filter_out_classes: tuple[int, ...] = ()   # training: dataset classes without instances
    exclude_classes: tuple[int, ...] = ()      # model classes never reported (never supervised)
    duplicate_iou: float | None = None     # drop duplicates above this point IoU (None: off)
    smooth_radius: float | None = None     # metres: colour-weighted mask smoothing (None: off)
    smooth_color_sigma: float = 0.1        # its colour kernel width, rgb in [0, 1]
    color_stats_known: bool = True

    def __post_init__(self):
        num = self.model.num_classes - 1
        if len(self.class_names) != num or len(self.label_ids) != num:
            raise ValueError(f"preset {self.name}: {len(self.class_names)} names and {len(self.label_ids)} "
                             f"label ids for {num} model classes")

    @property
    def class_to_label(self) -> np.ndarray:
        return np.asarray(self.label_ids, dtype=np.int64)

    def replace(self, **changes) -> "Preset":
        return dataclasses.replace(self, **changes)

    def with_model(self, **changes) -> "Preset":
        return dataclasses.replace(self, model=dataclasses.replace(self.model, **changes))


def _scannet() -> Preset:
    return Preset(
        name="scannet", model=Mask3DConfig(num_classes=19, num_labels=20, num_queries=150),
        class_names=SCANNET20_NAMES[2:], label_ids=SCANNET20_IDS[2:], voxel_size=0.02,
        color_mean=SCANNET_COLOR_MEAN, color_std=SCANNET_COLOR_STD, topk=500, dbscan_eps=0.95,
        label_offset=2, filter_out_classes=(0, 1))


def _scannet200_classes() -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Names and label ids of the 200 model classes (see the module docstring for the remap)."""
    table_rows = (1, *range(3, 200))  # class 0 -> chair; class c >= 1 -> table entry c + 2
    unsupervised = (198, 199)
    names = tuple(SCANNET200_NAMES[row] for row in table_rows) + tuple(f"class_{c}" for c in unsupervised)
    ids = tuple(SCANNET200_IDS[row] for row in table_rows) + (-1,) * len(unsupervised)
    return names, ids


SCANNET200_CLASS_NAMES, SCANNET200_CLASS_IDS = _scannet200_classes()


def _scannet200() -> Preset:
    return Preset(
        name="scannet200", model=Mask3DConfig(num_classes=201, num_labels=200, num_queries=150),
        class_names=SCANNET200_CLASS_NAMES, label_ids=SCANNET200_CLASS_IDS, voxel_size=0.02,
        color_mean=SCANNET_COLOR_MEAN, color_std=SCANNET_COLOR_STD, topk=750, dbscan_eps=0.95,
        label_offset=2, filter_out_classes=(0, 2), exclude_classes=(198, 199))


def _s3dis() -> Preset:
    return Preset(
        name="s3dis", model=Mask3DConfig(num_classes=14, num_labels=13, num_queries=100),
        class_names=S3DIS_NAMES, label_ids=tuple(range(13)), voxel_size=0.02,
        color_mean=SCANNET_COLOR_MEAN, color_std=SCANNET_COLOR_STD, topk=-1, dbscan_eps=0.6,
        color_stats_known=False)


def _stpls3d() -> Preset:
    return Preset(
        name="stpls3d",
        model=Mask3DConfig(num_classes=15, num_labels=15, num_queries=160, backbone="Res16UNet18B"),
        class_names=STPLS3D_NAMES[1:], label_ids=tuple(range(1, 15)), voxel_size=0.333,
        color_mean=SCANNET_COLOR_MEAN, color_std=SCANNET_COLOR_STD, topk=750, dbscan_eps=14.0,
        label_offset=1, filter_out_classes=(0,), color_stats_known=False)


PRESETS = {"scannet": _scannet, "scannet200": _scannet200, "s3dis": _s3dis, "stpls3d": _stpls3d}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None


def preset_from_description(description: dict, name: str = "checkpoint") -> Preset:
    """A preset from the ``hyper_parameters["mask3d_ros"]`` block the project's trainer writes."""
    model_fields = dict(description["model"])
    if "hlevels" in model_fields:
        model_fields["hlevels"] = tuple(model_fields["hlevels"])
    class_names = tuple(description["class_names"])
    return Preset(
        name=name, model=Mask3DConfig(**model_fields), class_names=class_names,
        label_ids=tuple(range(len(class_names))), voxel_size=float(description["voxel_size"]),
        color_mean=tuple(description["color_mean"]), color_std=tuple(description["color_std"]),
        topk=int(description.get("topk", model_fields.get("num_queries", 100))),
        dbscan_eps=description.get("dbscan_eps"), duplicate_iou=description.get("duplicate_iou"),
        smooth_radius=description.get("smooth_radius"),
        smooth_color_sigma=float(description.get("smooth_color_sigma", 0.1)))
