"""The benchmarks' folder layouts as they are distributed, read into one description.

Each reader takes ``root`` (the folder holding the dataset's folder: the DataSplits' base_dir) and
returns a :class:`Layout`: the sequences, their frames and ground-truth files, the standard splits,
and where the prepared files go. A tree it does not recognise raises :class:`LayoutError` naming the
path it expected.

- ``davis2016``: ``DAVIS/JPEGImages/480p/<seq>/00000.jpg``, ``DAVIS/Annotations/480p/<seq>/00000.png``,
  ``DAVIS/ImageSets/480p/{train,val}.txt`` (optional: the 30 / 20 standard sequences are built in);
  splits train (30), val (20), test = val.
- ``davis2017`` (unsupervised): ``DAVIS/JPEGImages/480p/<seq>/``, ``DAVIS/Annotations_unsupervised/480p/<seq>/``
  (else ``Annotations/480p``), ``DAVIS/ImageSets/2017/{train,val}.txt``; test = val; objects merged (> 0).
- ``segtrackv2``: ``SegTrackv2/JPEGImages/<seq>/<frame>.png|bmp|jpg``,
  ``SegTrackv2/GroundTruth/<seq>/[<obj_id>/]<frame>.png|bmp``; every sequence in train = val = test;
  the objects merged into one foreground.
- ``fbms59``: ``FBMS59/{Trainingset,Testset}/<seq>/<seq>_<k>.jpg``, ``<seq>/GroundTruth/<seq>_<k>_gt.pgm|ppm|png``
  and ``<seq>Def.dat``; the chosen set (``Testset`` by default) in train = val = test, annotated frames only.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from csvflowdatamodule.extract_flow import IMAGE_EXTS, list_frames

logger = logging.getLogger(__name__)

#: DAVIS-2016's standard splits (the sequences of the authors' DAVIS_D16Split_{train,val}.csv)
DAVIS16_TRAIN: tuple[str, ...] = (
    "bear", "bmx-bumps", "boat", "breakdance-flare", "bus", "car-turn", "dance-jump", "dog-agility", "drift-turn",
    "elephant", "flamingo", "hike", "hockey", "horsejump-low", "kite-walk", "lucia", "mallard-fly", "mallard-water",
    "motocross-bumps", "motorbike", "paragliding", "rhino", "rollerblade", "scooter-gray", "soccerball", "stroller",
    "surf", "swing", "tennis", "train")
DAVIS16_VAL: tuple[str, ...] = (
    "blackswan", "bmx-trees", "breakdance", "camel", "car-roundabout", "car-shadow", "cows", "dance-twirl", "dog",
    "drift-chicane", "drift-straight", "goat", "horsejump-high", "kite-surf", "libby", "motocross-jump",
    "paragliding-launch", "parkour", "scooter-black", "soapbox")

#: the authors' name of the folder of DAVIS flows (their DataSplits point to it)
DAVIS_FLOW_DIR = "OpticalFlow020321"
FLOW_DIR = "OpticalFlow"
FBMS_SETS = ("test", "train", "all")
_FBMS_SET_DIRS = {"test": ("Testset",), "train": ("Trainingset",), "all": ("Trainingset", "Testset")}


class LayoutError(ValueError):
    """The folder does not hold the dataset in its published layout (the message names the expected path)."""


@dataclass(frozen=True)
class FrameEntry:
    """One frame: ``stem`` names its outputs; paths are relative to the root (POSIX); ``gt`` lists the
    ground-truth files to merge (several objects), empty for an unannotated frame."""

    stem: str
    image: str
    gt: tuple[str, ...] = ()


@dataclass
class SequenceEntry:
    name: str
    group: str
    frames: list[FrameEntry]


@dataclass
class Layout:
    """A dataset found on disk and where its prepared files go (all paths relative to ``root``).

    - ``flow_root/<seq>/<stem>.flo`` (+ ``.flo.png``, the colour coding) for each flow;
    - ``mask_root/<seq>/<stem>.png`` (0 / 255) for the merged ground truth, or ``mask_root`` None when
      the distributed masks are used as they are (DAVIS: every value > 0 is foreground);
    - ``splits``: DataSplit step → sequence names; ``columns``: the CSVs' column order;
    - ``gt_rule``: ``as_is`` | ``union`` (objects merged) | ``fbms`` (not the background colour);
    - ``flow_frames``: ``all`` (a flow for every frame) or ``labelled`` (annotated frames only).
    """

    dataset: str
    split_name: str
    root: Path
    flow_root: str
    mask_root: str | None
    sequences: list[SequenceEntry]
    splits: dict[str, list[str]]
    columns: tuple[str, ...]
    gt_rule: str
    flow_frames: str = "all"
    missing: list[str] = field(default_factory=list)

    def sequence(self, name: str) -> SequenceEntry:
        for s in self.sequences:
            if s.name == name:
                return s
        raise KeyError(name)


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------
def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _require_dir(path: Path, dataset: str, what: str) -> Path:
    if not path.is_dir():
        raise LayoutError(f"{dataset}: expected {path} ({what}); is --root the folder holding the dataset's folder?")
    return path


def _find_dataset_dir(root: Path, names: tuple[str, ...], marker: str, dataset: str, what: str) -> Path:
    """The first ``root/<name>`` holding ``marker``; LayoutError naming the first expected path otherwise."""
    if not root.is_dir():
        raise LayoutError(f"{dataset}: --root {root} is not a directory")
    for name in names:
        if (root / name / marker).exists():
            return root / name
    raise LayoutError(f"{dataset}: expected {root / names[0] / marker} ({what}); found none of "
                      f"{[str(root / n / marker) for n in names]}")


_DIGITS = re.compile(r"(\d+)")


def frame_number(stem: str) -> int | None:
    """The last run of digits of a file stem (``cars1_01`` → 1, ``tennis012`` → 12), None without digits."""
    runs = _DIGITS.findall(stem)
    return int(runs[-1]) if runs else None


def _match_gt(frames: list[Path], gt_files: list[Path]) -> dict[int, Path]:
    """Frame index → GT file: same stem first, then same frame number (a file claims one frame)."""
    by_stem = {p.stem: i for i, p in enumerate(frames)}
    by_number: dict[int, int] = {}
    for i, p in enumerate(frames):
        n = frame_number(p.stem)
        if n is not None:
            by_number.setdefault(n, i)
    out: dict[int, Path] = {}
    for g in gt_files:
        i = by_stem.get(g.stem)
        if i is None:
            n = frame_number(g.stem.removesuffix("_gt"))
            i = by_number.get(n) if n is not None else None
        if i is None:
            logger.warning("ground truth %s matches no frame: ignored", g)
            continue
        out.setdefault(i, g)
    return out


def _sequence_dirs(d: Path) -> list[Path]:
    return sorted((p for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


# ----------------------------------------------------------------------------------------------
# DAVIS
# ----------------------------------------------------------------------------------------------
def _read_imageset(path: Path) -> list[str]:
    """Sequence names of a DAVIS ImageSets file: lines ``/JPEGImages/480p/bear/00000.jpg ...`` (2016) or
    ``bear`` (2017), in order of first appearance."""
    seqs: list[str] = []
    for line in path.read_text().splitlines():
        tok = line.strip().split()
        if not tok:
            continue
        parts = [p for p in tok[0].split("/") if p]
        name = parts[2] if len(parts) >= 4 and parts[0] == "JPEGImages" else parts[0]
        if name not in seqs:
            seqs.append(name)
    return seqs


def _davis(root: Path, flow_dir: str, dataset: str, split_name: str, annotations: tuple[str, ...],
           imagesets: str, builtin: dict[str, tuple[str, ...]] | None) -> Layout:
    ddir = _find_dataset_dir(root, ("DAVIS",), "JPEGImages/480p", dataset,
                             "DAVIS as distributed: DAVIS/JPEGImages/480p/<seq>/00000.jpg")
    img_dir = ddir / "JPEGImages" / "480p"
    ann_dir = next((ddir / a / "480p" for a in annotations if (ddir / a / "480p").is_dir()), None)
    if ann_dir is None:
        raise LayoutError(f"{dataset}: expected {ddir / annotations[0] / '480p'} (the masks: "
                          f"DAVIS/{annotations[0]}/480p/<seq>/00000.png)")
    splits: dict[str, list[str]] = {}
    for step in ("train", "val"):
        f = ddir / "ImageSets" / imagesets / f"{step}.txt"
        if f.is_file():
            splits[step] = _read_imageset(f)
        elif builtin is not None:
            splits[step] = list(builtin[step])
        else:
            raise LayoutError(f"{dataset}: expected {f} (the {step} sequences)")
    if builtin is not None and any(not set(splits[s]) <= set(builtin[s]) for s in splits):
        logger.warning("%s: the ImageSets list sequences outside DAVIS-2016's standard train/val splits", dataset)
    splits["test"] = list(splits["val"])
    sequences, missing = [], []
    for name in dict.fromkeys(splits["train"] + splits["val"]):
        sdir = img_dir / name
        if not sdir.is_dir():
            missing.append(name)
            continue
        frames = [p for p in list_frames(sdir)]
        entries = []
        for p in frames:
            gt = ann_dir / name / f"{p.stem}.png"
            entries.append(FrameEntry(p.stem, _rel(p, root), (_rel(gt, root),) if gt.is_file() else ()))
        sequences.append(SequenceEntry(name, "train" if name in splits["train"] else "val", entries))
    if missing:
        logger.warning("%s: %d sequence(s) of the splits are not in %s: %s", dataset, len(missing), img_dir,
                       ", ".join(missing))
    if not sequences:
        raise LayoutError(f"{dataset}: no sequence of the splits under {img_dir} (expected {img_dir}/<seq>/00000.jpg)")
    return Layout(dataset, split_name, root, f"DAVIS/{flow_dir}/480p", None, sequences, splits,
                  ("Image", "GtMask", "Flow", "FlowRGB"), "as_is", "all", missing)


def read_davis2016(root: str | Path, flow_dir: str = DAVIS_FLOW_DIR) -> Layout:
    return _davis(Path(root), flow_dir, "davis2016", "DAVIS16", ("Annotations",), "480p",
                  {"train": DAVIS16_TRAIN, "val": DAVIS16_VAL})


def read_davis2017(root: str | Path, flow_dir: str = DAVIS_FLOW_DIR) -> Layout:
    layout = _davis(Path(root), flow_dir, "davis2017", "DAVIS17", ("Annotations_unsupervised", "Annotations"),
                    "2017", None)
    layout.gt_rule = "as_is"  # palette masks: every object (value > 0) is foreground
    return layout


# ----------------------------------------------------------------------------------------------
# SegTrackV2
# ----------------------------------------------------------------------------------------------
def read_segtrackv2(root: str | Path, flow_dir: str = FLOW_DIR) -> Layout:
    root = Path(root)
    ddir = _find_dataset_dir(root, ("SegTrackv2", "SegTrackV2"), "JPEGImages", "segtrackv2",
                             "SegTrackV2 as distributed: SegTrackv2/JPEGImages/<seq>/<frame>.png")
    gt_dir = _require_dir(ddir / "GroundTruth", "segtrackv2", "SegTrackv2/GroundTruth/<seq>/[<obj_id>/]<frame>.png")
    sequences = []
    for sdir in _sequence_dirs(ddir / "JPEGImages"):
        frames = list_frames(sdir)
        gdir = gt_dir / sdir.name
        if not frames:
            continue
        if not gdir.is_dir():
            logger.warning("segtrackv2: %s has no ground-truth folder %s: its frames get no row", sdir.name, gdir)
            objects: list[Path] = []
        else:
            objects = [d for d in _sequence_dirs(gdir)] or [gdir]  # <obj_id>/ folders, else the masks themselves
        per_frame: dict[int, list[str]] = {}
        for odir in objects:
            for i, g in _match_gt(frames, list_frames(odir)).items():
                per_frame.setdefault(i, []).append(_rel(g, root))
        entries = [FrameEntry(p.stem, _rel(p, root), tuple(per_frame.get(i, ()))) for i, p in enumerate(frames)]
        sequences.append(SequenceEntry(sdir.name, "all", entries))
    if not sequences:
        raise LayoutError(f"segtrackv2: no sequence folder with frames in {ddir / 'JPEGImages'}")
    names = [s.name for s in sequences]
    base = ddir.name
    return Layout("segtrackv2", "SegTrackV2", root, f"{base}/{flow_dir}", f"{base}/GroundTruthMerged", sequences,
                  {"train": names, "val": names, "test": names}, ("Flow", "Image", "GtMask", "FlowRGB"), "union")


# ----------------------------------------------------------------------------------------------
# FBMS-59
# ----------------------------------------------------------------------------------------------
def read_fbms_def(path: Path) -> dict[str, int]:
    """``<seq>Def.dat``: annotated file name → its frame index in the shot (0-based, the file's
    ``Frame number``). Empty when the file lists none."""
    lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines()]
    out: dict[str, int] = {}
    for k, line in enumerate(lines):
        if line.lower().startswith("file name") and k + 1 < len(lines) and k >= 1:
            number = lines[k - 1]
            if number.lstrip("-").isdigit():
                out[lines[k + 1]] = int(number)
    return out


def _fbms_gt_files(gdir: Path) -> list[Path]:
    """The annotation of each frame in ``GroundTruth/``: ``*_gt.pgm`` before ``.ppm`` before ``.png``
    (``PROB`` files left out)."""
    rank = {".pgm": 0, ".ppm": 1, ".png": 2}
    best: dict[str, Path] = {}
    for p in gdir.iterdir():
        if not p.is_file() or p.suffix.lower() not in rank or "prob" in p.name.lower():
            continue
        key = p.stem.removesuffix("_gt")
        if key not in best or rank[p.suffix.lower()] < rank[best[key].suffix.lower()]:
            best[key] = p
    return sorted(best.values(), key=lambda p: p.name)


def read_fbms59(root: str | Path, flow_dir: str = FLOW_DIR, fbms_set: str = "test",
                all_frames: bool = False) -> Layout:
    root = Path(root)
    if fbms_set not in FBMS_SETS:
        raise LayoutError(f"fbms59: --fbms_set must be one of {list(FBMS_SETS)}, got {fbms_set!r}")
    set_dirs = _FBMS_SET_DIRS[fbms_set]
    ddir = _find_dataset_dir(root, ("FBMS59", "FBMS-59", "FBMS"), set_dirs[0], "fbms59",
                             f"FBMS-59 as distributed: FBMS59/{set_dirs[0]}/<seq>/<seq>_<k>.jpg")
    sequences = []
    for set_dir in set_dirs:
        sdir_root = _require_dir(ddir / set_dir, "fbms59", f"FBMS59/{set_dir}/<seq>/")
        for sdir in _sequence_dirs(sdir_root):
            frames = [p for p in list_frames(sdir) if p.suffix.lower() in IMAGE_EXTS]
            if not frames:
                continue
            gdir = sdir / "GroundTruth"
            if not gdir.is_dir():
                raise LayoutError(f"fbms59: expected {gdir} (the sparse annotations: "
                                  f"GroundTruth/{sdir.name}_<k>_gt.pgm and {sdir.name}Def.dat)")
            gts = _fbms_gt_files(gdir)
            definition = gdir / f"{sdir.name}Def.dat"
            index = read_fbms_def(definition) if definition.is_file() else {}
            matched: dict[int, Path] = {}
            if index:
                for g in gts:
                    f = index.get(g.name)
                    if f is None:
                        f = next((v for k, v in index.items() if Path(k).stem.removesuffix("_gt") ==
                                  g.stem.removesuffix("_gt")), None)
                    if f is not None and 0 <= f < len(frames):
                        matched.setdefault(f, g)
                unmatched = [g for g in gts if g not in matched.values()]
                for i, g in _match_gt(frames, unmatched).items():
                    matched.setdefault(i, g)
            else:
                matched = _match_gt(frames, gts)
            if not matched:
                logger.warning("fbms59: %s: no annotation matches a frame", sdir)
            entries = [FrameEntry(p.stem, _rel(p, root), (_rel(matched[i], root),) if i in matched else ())
                       for i, p in enumerate(frames)]
            sequences.append(SequenceEntry(sdir.name, set_dir, entries))
    if not sequences:
        raise LayoutError(f"fbms59: no sequence with frames in {[str(ddir / s) for s in set_dirs]}")
    names = [s.name for s in sequences]
    base = ddir.name
    return Layout("fbms59", "FBMS59", root, f"{base}/{flow_dir}", f"{base}/GroundTruthBinary", sequences,
                  {"train": names, "val": names, "test": names}, ("Flow", "Image", "GtMask", "FlowRGB"), "fbms",
                  "all" if all_frames else "labelled")


DATASETS = {"davis2016": read_davis2016, "davis2017": read_davis2017, "segtrackv2": read_segtrackv2,
            "fbms59": read_fbms59}
