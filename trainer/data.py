"""Oxford-IIIT Pet (and look-alikes) from any of the supported layouts, plus stratified seeded subsets.

Sources, picked from `--dataset`:
- `builtin:synthetic-pets`: generated in memory (trainer.builtin);
- a hub id such as `timm/oxford-iiit-pet`: its `data/*.parquet` files via huggingface_hub (cache / HF_TOKEN);
- a local dir with `data/train-*.parquet` + `data/test-*.parquet` (a staged copy of that repo);
- the official VGG layout: `annotations/trainval.txt`, `annotations/test.txt`, `images/<stem>.jpg`;
- an image folder: `<dir>/<split>/<label>/*.jpg` (split: train / test|val|validation) or `<dir>/<label>/*`;
- a JSONL file of {"image": path (relative to the file), "label": name or 0-36, "split"?: "train"|"test"}.

Parquet is read with pyarrow directly (no `datasets` fingerprinting) and images are decoded lazily, only for the
sampled rows. Sources with no test split are split 70/30, stratified and seeded.
"""

from __future__ import annotations

import io
import json
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from trainer.labels import LABELS, label_index

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"}
TEST_DIRS = ("test", "val", "validation", "eval")


class DataError(ValueError):
    """The dataset cannot be found or read; the message says where and what to fix."""


@dataclass(frozen=True)
class Example:
    """One labelled image; the pixels are decoded only when `open()` is called."""

    label: int
    image_id: str
    source: str | bytes | tuple  # file path, encoded bytes, or ("synthetic", label, index, seed)

    def open(self) -> Image.Image:
        try:
            if isinstance(self.source, tuple):
                from trainer.builtin import synthetic_image

                return synthetic_image(*self.source[1:])
            img = Image.open(io.BytesIO(self.source) if isinstance(self.source, bytes) else self.source)
            return img.convert("RGB")
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot decode image {self.image_id!r}: {exc}") from exc


@dataclass(frozen=True)
class Splits:
    train: list[Example]
    test: list[Example]


# ------------------------------------------------------------------------------------------- loading
def load_splits(dataset: str, seed: int = 42, token: str | None = None) -> Splits:
    """Every example of the train and test splits of `dataset` (see the module docstring for layouts)."""
    if dataset.startswith("builtin:"):
        return _synthetic(dataset)
    path = Path(dataset)
    if path.suffix == ".jsonl" and path.is_file():
        return _jsonl(path, seed)
    if path.is_dir():
        return _local_dir(path, seed)
    if dataset.count("/") == 1 and not path.exists() and not dataset.startswith((".", "/")):
        return _parquet_dir(_hub_snapshot(dataset, token))
    raise DataError(f"dataset {dataset!r} not found: give a local dir, a .jsonl file, a hub id or builtin:synthetic-pets")


def _local_dir(path: Path, seed: int) -> Splits:
    if list(path.glob("data/*.parquet")) or list(path.glob("*.parquet")):
        return _parquet_dir(path)
    if (path / "annotations" / "trainval.txt").is_file():
        return _vgg(path)
    return _image_folder(path, seed)


def _synthetic(dataset: str) -> Splits:
    from trainer.builtin import DATASETS, strip_prefix, synthetic_rows

    if strip_prefix(dataset) not in DATASETS:
        raise DataError(f"unknown built-in dataset {dataset!r}; choose builtin:synthetic-pets")
    make = lambda split: [Example(lab, iid, ("synthetic", lab, idx, 0)) for lab, idx, iid in synthetic_rows(split)]  # noqa: E731
    return Splits(train=make("train"), test=make("test"))


def _hub_snapshot(repo_id: str, token: str | None) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, repo_type="dataset", allow_patterns=["data/*.parquet", "*.parquet"],
                                      token=token))
    except Exception as exc:  # noqa: BLE001 - hub errors come in many types; all are fatal here, with the reason
        raise DataError(f"cannot fetch dataset {repo_id!r} from the Hugging Face Hub: {type(exc).__name__}: {exc}. "
                        "Stage it to a local dir (data/train-*.parquet, data/test-*.parquet) and pass that") from exc


def _parquet_dir(path: Path) -> Splits:
    files = sorted(path.glob("data/*.parquet")) or sorted(path.glob("*.parquet"))
    train = [f for f in files if f.name.startswith("train")]
    test = [f for f in files if f.name.startswith(TEST_DIRS)]
    if not train or not test:
        raise DataError(f"{path} needs data/train-*.parquet and data/test-*.parquet, found {[f.name for f in files]}")
    return Splits(train=_read_parquet(train), test=_read_parquet(test))


def _read_parquet(files: list[Path]) -> list[Example]:
    """Rows of timm/oxford-iiit-pet-style parquet: image{bytes,path}, label (ClassLabel int or name), image_id."""
    import pyarrow.parquet as pq

    examples = []
    for file in files:
        table = pq.read_table(file, columns=None)
        if "image" not in table.column_names or "label" not in table.column_names:
            raise DataError(f"{file} has columns {table.column_names}; need 'image' and 'label'")
        to_index = _label_mapper(table.schema.metadata or {})
        ids = table.column("image_id").to_pylist() if "image_id" in table.column_names else None
        for row, (image, label) in enumerate(zip(table.column("image").to_pylist(),
                                                 table.column("label").to_pylist(), strict=True)):
            data = image["bytes"] if isinstance(image, dict) else image
            image_id = ids[row] if ids else f"{file.stem}-{row}"
            examples.append(Example(to_index(label), str(image_id), data))
    return examples


def _label_mapper(metadata: dict):
    """Map a parquet label to our index: ClassLabel ints via the stored names, strings via label_index."""
    names = None
    raw = metadata.get(b"huggingface")
    if raw:
        features = json.loads(raw).get("info", {}).get("features", {})
        names = features.get("label", {}).get("names")

    def to_index(label) -> int:
        if isinstance(label, str):
            return _index(label)
        if names:
            return _index(names[label])
        if not 0 <= label < len(LABELS):
            raise DataError(f"label {label} is outside 0..36")
        return int(label)

    return to_index


def _index(name: str) -> int:
    try:
        return label_index(name)
    except KeyError as exc:
        raise DataError(str(exc.args[0]) + "; labels must be Oxford-IIIT Pet breed names or 0..36") from None


def _vgg(path: Path) -> Splits:
    """Official layout: annotation lines `Image CLASS-ID SPECIES BREED-ID`; CLASS-ID is 1..37 in our order."""
    def read(list_name: str) -> list[Example]:
        examples = []
        for line in (path / "annotations" / list_name).read_text().splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            stem, class_id = line.split()[:2]
            examples.append(Example(int(class_id) - 1, stem, str(path / "images" / f"{stem}.jpg")))
        return examples

    if not (path / "annotations" / "test.txt").is_file():
        raise DataError(f"{path}/annotations has trainval.txt but no test.txt")
    return Splits(train=read("trainval.txt"), test=read("test.txt"))


def _image_folder(path: Path, seed: int) -> Splits:
    split_dirs = {d.name.lower(): d for d in path.iterdir() if d.is_dir()}
    test_dir = next((split_dirs[n] for n in TEST_DIRS if n in split_dirs), None)
    if "train" in split_dirs and test_dir is not None:
        return Splits(train=_folder_examples(split_dirs["train"]), test=_folder_examples(test_dir))
    examples = _folder_examples(path)
    if not examples:
        raise DataError(f"no images found in {path}: expected <dir>/<split>/<breed>/*.jpg or <dir>/<breed>/*.jpg, "
                        "data/*.parquet, or annotations/trainval.txt")
    return _holdout(examples, seed)


def _folder_examples(path: Path) -> list[Example]:
    examples = []
    for label_dir in sorted(d for d in path.iterdir() if d.is_dir()):
        label = _index(label_dir.name)
        for file in sorted(label_dir.iterdir()):
            if file.suffix.lower() in IMAGE_SUFFIXES:
                examples.append(Example(label, f"{label_dir.name}/{file.stem}", str(file)))
    return examples


def _jsonl(path: Path, seed: int) -> Splits:
    rows = {"train": [], "test": [], None: []}
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            label = item["label"] if isinstance(item["label"], int) else _index(item["label"])
            image = path.parent / item["image"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DataError(f"{path}:{n}: need a JSON object with 'image' and 'label' ({exc})") from None
        split = {"val": "test", "validation": "test"}.get(item.get("split"), item.get("split"))
        rows.get(split, rows[None]).append(Example(label, str(item.get("image_id", item["image"])), str(image)))
    if rows["train"] and rows["test"]:
        return Splits(train=rows["train"], test=rows["test"])
    return _holdout(rows["train"] + rows["test"] + rows[None], seed)


def _holdout(examples: list[Example], seed: int, test_fraction: float = 0.3) -> Splits:
    """Stratified, seeded train/test split for sources that ship only one pool of images."""
    by_class = _by_class(examples)
    rng = random.Random(seed)
    train, test = [], []
    for label in sorted(by_class):
        items = by_class[label][:]
        rng.shuffle(items)
        cut = max(1, round(len(items) * test_fraction)) if len(items) > 1 else 0
        test += items[:cut]
        train += items[cut:]
    return Splits(train=train, test=test)


# ------------------------------------------------------------------------------------------- sampling
def _by_class(examples: list[Example]) -> dict[int, list[Example]]:
    groups: dict[int, list[Example]] = defaultdict(list)
    for ex in examples:
        groups[ex.label].append(ex)
    return groups


def stratified_sample(examples: list[Example], size: int | str, seed: int) -> list[Example]:
    """A seeded subset with classes as equal as possible (`size // k` each, the remainder to random classes).

    Classes with too few images give all they have and the shortfall is filled from the others. "all" or a
    size >= len(examples) returns every example. The result is shuffled with the same seed.
    """
    rng = random.Random(seed)
    if size == "all" or size >= len(examples):
        chosen = list(examples)
        rng.shuffle(chosen)
        return chosen
    groups = {label: rng.sample(items, len(items)) for label, items in sorted(_by_class(examples).items())}
    quota = dict.fromkeys(groups, 0)
    remaining = size
    while remaining > 0:  # round-robin over classes in a seeded order: fair shares, deterministic
        open_classes = [c for c in groups if quota[c] < len(groups[c])]
        rng.shuffle(open_classes)
        for c in open_classes[:remaining]:
            quota[c] += 1
        remaining -= min(remaining, len(open_classes))
    chosen = [ex for c in groups for ex in groups[c][: quota[c]]]
    rng.shuffle(chosen)
    return chosen


def select(splits: Splits, train_size: int, eval_size: int | str, seed: int) -> tuple[list[Example], list[Example]]:
    """Train subset from the train split, eval subset from the test split; eval never shares an image with train."""
    train = stratified_sample(splits.train, train_size, seed)
    train_ids = {ex.image_id for ex in train}
    test_pool = [ex for ex in splits.test if ex.image_id not in train_ids]
    if not train or not test_pool:
        raise DataError(f"dataset has {len(splits.train)} train and {len(test_pool)} usable test images; need both")
    return train, stratified_sample(test_pool, eval_size, seed + 1)
