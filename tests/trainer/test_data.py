"""Dataset layouts (fixtures built on the fly) and stratified, seeded, non-overlapping subsets."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from trainer.builtin import synthetic_image, write_dataset
from trainer.data import DataError, Example, load_splits, select, stratified_sample
from trainer.labels import LABELS

BREEDS = [0, 2, 28, 36]  # abyssinian, american pit bull terrier, saint bernard, yorkshire terrier


def _save(path, label, index):
    path.parent.mkdir(parents=True, exist_ok=True)
    synthetic_image(label, index).save(path)


def _check(splits, n_train, n_test):
    assert len(splits.train) == n_train and len(splits.test) == n_test
    assert {ex.label for ex in splits.train} == set(BREEDS)
    assert splits.train[0].open().mode == "RGB"


def test_vgg_layout(tmp_path):
    lines = {"trainval.txt": [], "test.txt": []}
    for label in BREEDS:
        stem = LABELS[label].title().replace(" ", "_") if label == 0 else LABELS[label].replace(" ", "_")
        for i in range(5):
            _save(tmp_path / "images" / f"{stem}_{i}.jpg", label, i)
            lines["trainval.txt" if i < 3 else "test.txt"].append(f"{stem}_{i} {label + 1} 1 1")
    (tmp_path / "annotations").mkdir()
    for name, rows in lines.items():
        (tmp_path / "annotations" / name).write_text("\n".join(rows) + "\n")
    _check(load_splits(str(tmp_path)), 12, 8)


def test_image_folder_with_splits(tmp_path):
    for label in BREEDS:
        for i in range(4):
            split = "train" if i < 3 else "test"
            _save(tmp_path / split / LABELS[label].title().replace(" ", "_") / f"{i}.jpg", label, i)
    _check(load_splits(str(tmp_path)), 12, 4)


def test_image_folder_without_splits_is_held_out_stratified(tmp_path):
    for label in BREEDS:
        for i in range(10):
            _save(tmp_path / LABELS[label].replace(" ", "-") / f"{i}.png", label, i)
    splits = load_splits(str(tmp_path), seed=1)
    _check(splits, 28, 12)
    assert not {e.image_id for e in splits.train} & {e.image_id for e in splits.test}


def test_jsonl(tmp_path):
    rows = []
    for label in BREEDS:
        for i in range(3):
            _save(tmp_path / "img" / f"{label}_{i}.jpg", label, i)
            rows.append({"image": f"img/{label}_{i}.jpg", "label": LABELS[label] if i else label,
                         "split": "test" if i == 2 else "train"})
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    _check(load_splits(str(tmp_path / "d.jsonl")), 8, 4)


def test_parquet_layout_round_trips_synthetic_pets(tmp_path):
    write_dataset(tmp_path)
    local = load_splits(str(tmp_path))
    builtin = load_splits("builtin:synthetic-pets")
    assert [(e.label, e.image_id) for e in local.test] == [(e.label, e.image_id) for e in builtin.test]
    assert len(local.train) == 37 * 30 and local.test[5].open().size == builtin.test[5].open().size


def test_errors_say_what_is_wrong(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_splits(str(tmp_path / "nope"))
    (tmp_path / "golden_retriever").mkdir()
    synthetic_image(0, 0).save(tmp_path / "golden_retriever" / "a.png")
    with pytest.raises(DataError, match="golden_retriever.*37 Oxford-IIIT Pet breeds"):
        load_splits(str(tmp_path))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"img": "x.jpg"}\n')
    with pytest.raises(DataError, match="bad.jsonl:1"):
        load_splits(str(bad))


def _pool(per_class):
    return [Example(c, f"{c}-{i}", ("synthetic", c, i, 0)) for c, n in per_class.items() for i in range(n)]


def test_stratified_sample_is_balanced_seeded_and_fills_shortfall():
    pool = _pool({c: 30 for c in range(37)} | {5: 3})
    sample = stratified_sample(pool, 1000, seed=7)
    counts = Counter(e.label for e in sample)
    assert len(sample) == 1000 and len({e.image_id for e in sample}) == 1000
    assert counts[5] == 3  # a short class gives all it has ...
    others = [counts[c] for c in range(37) if c != 5]
    assert max(others) - min(others) <= 1  # ... and the others share the rest evenly (27-28 each)
    assert [e.image_id for e in stratified_sample(pool, 1000, seed=7)] == [e.image_id for e in sample]
    assert [e.image_id for e in stratified_sample(pool, 1000, seed=8)] != [e.image_id for e in sample]
    assert len(stratified_sample(pool, "all", seed=1)) == len(pool)


def test_select_eval_never_overlaps_train():
    splits = load_splits("builtin:synthetic-pets")
    shared = splits.train[:5]
    leaky = type(splits)(train=splits.train, test=splits.test + shared)
    train, evals = select(leaky, 1110, "all", seed=3)
    assert not {e.image_id for e in train} & {e.image_id for e in evals}
    assert len(evals) == len(splits.test)


def test_corrupt_image_raises_data_error_naming_it():
    with pytest.raises(DataError, match="cannot decode image 'Bengal_7'"):
        Example(5, "Bengal_7", b"not a jpeg").open()


def test_worker_errors_are_reported_as_one_line():
    from trainer.__main__ import describe

    exc = DataError("Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
                    "  File x\ntrainer.data.DataError: cannot decode image 'Bengal_7': broken")
    assert describe(exc) == "DataError: cannot decode image 'Bengal_7': broken"


def test_hub_id_reads_the_snapshot_parquet(tmp_path, monkeypatch):
    import huggingface_hub

    write_dataset(tmp_path)
    calls = []

    def fake_snapshot(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    splits = load_splits("timm/oxford-iiit-pet", token="tok")
    assert len(splits.test) == 370 and calls[0][0] == "timm/oxford-iiit-pet"
    assert calls[0][1]["repo_type"] == "dataset" and calls[0][1]["token"] == "tok"

    def offline(repo_id, **kwargs):
        raise OSError("offline and not cached")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(DataError, match="cannot fetch dataset 'timm/oxford-iiit-pet'.*Stage it"):
        load_splits("timm/oxford-iiit-pet")
