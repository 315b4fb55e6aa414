"""The 37 Oxford-IIIT Pet breeds and robust mapping from free model text to a breed index (pure Python).

Names are the readable form of timm/oxford-iiit-pet's ClassLabel names (index = official CLASS-ID - 1), e.g.
"american_pit_bull_terrier" -> "american pit bull terrier". Model output is mapped by normalising (case, `_`/`-`,
punctuation, plurals), applying a table of common aliases and then picking the breed mentioned first; anything
unmatched is `None` ("unknown"), never a 38th class.
"""

from __future__ import annotations

import re

LABELS: tuple[str, ...] = (
    "abyssinian", "american bulldog", "american pit bull terrier", "basset hound", "beagle",
    "bengal", "birman", "bombay", "boxer", "british shorthair",
    "chihuahua", "egyptian mau", "english cocker spaniel", "english setter", "german shorthaired",
    "great pyrenees", "havanese", "japanese chin", "keeshond", "leonberger",
    "maine coon", "miniature pinscher", "newfoundland", "persian", "pomeranian",
    "pug", "ragdoll", "russian blue", "saint bernard", "samoyed",
    "scottish terrier", "shiba inu", "siamese", "sphynx", "staffordshire bull terrier",
    "wheaten terrier", "yorkshire terrier",
)  # fmt: skip
CAT_BREEDS = frozenset(
    {"abyssinian", "bengal", "birman", "bombay", "british shorthair", "egyptian mau", "maine coon", "persian",
     "ragdoll", "russian blue", "siamese", "sphynx"}
)  # fmt: skip
NUM_LABELS = len(LABELS)

# Alias -> canonical name. Keys are in normalised form (see normalise()). Longer aliases win over shorter ones.
ALIASES: dict[str, str] = {
    "pitbull": "american pit bull terrier", "pit bull": "american pit bull terrier",
    "pit bull terrier": "american pit bull terrier", "american pitbull": "american pit bull terrier",
    "american pitbull terrier": "american pit bull terrier", "apbt": "american pit bull terrier",
    "staffy": "staffordshire bull terrier", "staffie": "staffordshire bull terrier",
    "staffordshire terrier": "staffordshire bull terrier", "staffordshire": "staffordshire bull terrier",
    "st bernard": "saint bernard", "st bernards": "saint bernard", "bernard": "saint bernard",
    "yorkie": "yorkshire terrier", "yorkshire": "yorkshire terrier",
    "soft coated wheaten terrier": "wheaten terrier", "wheaten": "wheaten terrier",
    "scottie": "scottish terrier", "scotty": "scottish terrier",
    "cocker spaniel": "english cocker spaniel", "cocker": "english cocker spaniel",
    "german shorthaired pointer": "german shorthaired", "gsp": "german shorthaired",
    "german short haired": "german shorthaired", "german shorthair": "german shorthaired",
    "shiba": "shiba inu", "min pin": "miniature pinscher", "minpin": "miniature pinscher",
    "pyrenean mountain dog": "great pyrenees", "pyrenees": "great pyrenees",
    "newfie": "newfoundland", "pom": "pomeranian", "leo": "leonberger",
    "basset": "basset hound", "japanese spaniel": "japanese chin",
    "sphinx": "sphynx", "sphynx cat": "sphynx", "russian blue cat": "russian blue", "blue russian": "russian blue",
    "british short hair": "british shorthair", "british shorthaired": "british shorthair",
    "maine coon cat": "maine coon", "mainecoon": "maine coon", "egyptian": "egyptian mau",
    "samoyed dog": "samoyed", "sammy": "samoyed", "bengal cat": "bengal", "abyssinian cat": "abyssinian",
    "sacred cat of burma": "birman", "persian cat": "persian", "siamese cat": "siamese", "rag doll": "ragdoll",
    "keeshonden": "keeshond", "english setter dog": "english setter",
}  # fmt: skip

_WORD = re.compile(r"[a-z0-9]+")


def normalise(text: str) -> str:
    """Lower-case, turn `_ - . ' ,` etc. into spaces, collapse runs, singularise simple plurals word by word."""
    words = _WORD.findall(text.lower().replace("'s", ""))
    return " ".join(_singular(w) for w in words)


def readable(name: str) -> str:
    """A dataset label ("American_Pit_Bull_Terrier", "great-pyrenees") -> its readable breed name."""
    return " ".join(_WORD.findall(name.lower()))


def _singular(word: str) -> str:
    # "pugs" -> "pug", "terriers" -> "terrier", "chihuahuas" -> "chihuahua"; keep breed words ending in s.
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "ous", "is", "us", "nees")):
        return word[:-1]
    return word


# Every phrase that names a breed, normalised, mapped to its index; longest phrases are tried first.
_PHRASES: dict[str, int] = {normalise(name): i for i, name in enumerate(LABELS)}
_PHRASES.update({normalise(alias): LABELS.index(target) for alias, target in ALIASES.items()})
_PATTERN = re.compile(
    r"\b(" + "|".join(re.escape(p) for p in sorted(_PHRASES, key=len, reverse=True)) + r")\b"
)


def label_index(name: str) -> int:
    """Exact index of a dataset label in any spelling ("Saint_Bernard" -> 28). Raises KeyError if unknown."""
    found = _PHRASES.get(normalise(name))
    if found is None:
        raise KeyError(f"{name!r} is not one of the 37 Oxford-IIIT Pet breeds")
    return found


def parse_prediction(text: str) -> int | None:
    """Map free model text to a breed index, or None when no breed is named.

    The earliest mention wins (models often say "X, not Y"); at the same position the longest phrase wins
    because the regex alternation is ordered longest first ("american pit bull terrier" over "pit bull").
    """
    match = _PATTERN.search(normalise(text))
    return None if match is None else _PHRASES[match.group(1)]
