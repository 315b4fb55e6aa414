"""Label mapping battery and metrics against scikit-learn."""

from __future__ import annotations

import random

import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

from trainer.labels import LABELS, label_index, parse_prediction, readable
from trainer.metrics import classification_report, wilson_interval


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("american pit bull terrier", "american pit bull terrier"),
        ("American_Pit_Bull_Terrier", "american pit bull terrier"),
        ("It's a pitbull!", "american pit bull terrier"),
        ("Pit-Bull", "american pit bull terrier"),
        ("staffy", "staffordshire bull terrier"),
        ("Staffordshire Bull Terriers", "staffordshire bull terrier"),
        ("St. Bernard", "saint bernard"),
        ("saint-bernard", "saint bernard"),
        ("Yorkie", "yorkshire terrier"),
        ("The breed is: **Great Pyrenees**.", "great pyrenees"),
        ("Answer: Beagles", "beagle"),
        ("basset", "basset hound"),
        ("a German Shorthaired Pointer", "german shorthaired"),
        ("english cocker spaniel", "english cocker spaniel"),
        ("cocker spaniel", "english cocker spaniel"),
        ("Maine Coon cat", "maine coon"),
        ("Sphinx", "sphynx"),
        ("Siamese cats", "siamese"),
        ("Russian Blue", "russian blue"),
        ("This looks like a pug, not a boxer", "pug"),
        ("shiba", "shiba inu"),
        ("min pin", "miniature pinscher"),
        ("Havanese", "havanese"),
        ("Persian", "persian"),
        ("Abyssinian", "abyssinian"),
        ("newfie", "newfoundland"),
        ("Soft-coated Wheaten Terrier", "wheaten terrier"),
        ("scottie", "scottish terrier"),
    ],
)
def test_parse_prediction_battery(text, expected):
    found = parse_prediction(text)
    assert found is not None and LABELS[found] == expected


@pytest.mark.parametrize("text", ["", "Unknown", "a dog", "I am not sure", "cat", "terrier", "golden retriever"])
def test_unmatched_text_is_unknown(text):
    assert parse_prediction(text) is None


def test_every_label_parses_to_itself_in_all_spellings():
    for i, name in enumerate(LABELS):
        plural = [] if name.endswith(("s", "x")) else [name.title() + "s"]
        for spelling in [name, name.upper(), name.replace(" ", "_"), name.replace(" ", "-"), *plural]:
            assert parse_prediction(spelling) == i, spelling
        assert label_index(name.replace(" ", "_")) == i
        assert readable(name.title().replace(" ", "_")) == name


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-3) and hi == pytest.approx(0.9433, abs=1e-3)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)
    assert wilson_interval(0, 0) == (0.0, 0.0)


@pytest.mark.parametrize("seed", range(5))
def test_report_matches_sklearn(seed):
    rng = random.Random(seed)
    present = rng.sample(range(37), 20)  # some classes absent from the eval set, like a small eval
    y_true = [rng.choice(present) for _ in range(150)]
    y_pred = [None if rng.random() < 0.15 else (t if rng.random() < 0.5 else rng.randrange(37)) for t in y_true]
    report = classification_report(y_true, y_pred)
    sk_pred = [-1 if p is None else p for p in y_pred]
    assert report["accuracy"] == pytest.approx(accuracy_score(y_true, sk_pred))
    assert report["macro_f1"] == pytest.approx(
        f1_score(y_true, sk_pred, labels=list(range(37)), average="macro", zero_division=0))
    p, r, f, s = precision_recall_fscore_support(y_true, sk_pred, labels=list(range(37)), zero_division=0)
    for i, name in enumerate(LABELS):
        row = report["per_class"][name]
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == pytest.approx((p[i], r[i], f[i], s[i]))
    assert report["unknown"] == sum(x is None for x in y_pred)
    assert sum(map(sum, report["confusion"])) == len(y_true) - report["unknown"]
    assert len(report["confusion"]) == 37 and report["n"] == 150
