"""Named sets of corruptions, resolved in one place for every corruption benchmark.

`heldout` is the 4 corruptions Hendrycks & Dietterich (2019) released for validation
(speckle_noise, gaussian_blur, spatter, saturate): tune hyperparameters on them without
touching the 15 test corruptions.
"""

from __future__ import annotations

from collections.abc import Sequence

from tta.data.corruptions import ALL_CORRUPTIONS, HELDOUT_CORRUPTIONS, STANDARD_CORRUPTIONS

DOMAIN_SETS: dict[str, tuple[str, ...]] = {
    "standard": STANDARD_CORRUPTIONS,
    "heldout": HELDOUT_CORRUPTIONS,
    "all": ALL_CORRUPTIONS,
}


def resolve_domains(domains: str | Sequence[str]) -> tuple[str, ...]:
    """Expand set names ('standard', 'heldout', 'all') and comma lists into domain names.

    `"heldout"` -> the 4 held-out corruptions; `"fog,heldout"` -> fog then the 4; a tuple of
    names is returned as it is. Names that are not sets are kept (the benchmark checks them),
    repeats too (e.g. the 15 corruptions twice, to measure forgetting).
    """
    items = domains.split(",") if isinstance(domains, str) else list(domains)
    names: list[str] = []
    for item in items:
        item = item.strip()
        if not item:
            continue
        names.extend(DOMAIN_SETS.get(item, (item,)))
    if not names:
        raise ValueError(
            "no domains given: name corruptions, a set (standard, heldout, all), or domains"
        )
    return tuple(names)
