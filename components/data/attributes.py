"""Product attributes in the AdvertiseGen notation: `类型#上衣*材质#牛仔布*颜色#白色`."""

from __future__ import annotations

CATEGORY_KEY = "类型"
UNK = "<UNK>"


def parse_attributes(content: str) -> dict[str, list[str]]:
    """`key#value*key#value` -> {key: [values]} (repeated keys keep every value, in order).

    `<UNK>` (a masked brand name in the source data) is kept as a value, never dropped.
    """
    if not isinstance(content, str) or not content.strip():
        raise ValueError("empty attribute string")
    attributes: dict[str, list[str]] = {}
    for pair in content.strip().split("*"):
        if not pair:
            continue
        key, sep, value = pair.partition("#")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise ValueError(f"malformed attribute pair {pair!r} in {content!r}")
        values = attributes.setdefault(key, [])
        if value not in values:
            values.append(value)
    if not attributes:
        raise ValueError(f"no attributes in {content!r}")
    return attributes


def shuffled_attributes(attributes: dict[str, list[str]], rng) -> dict[str, list[str]]:
    """The same attributes with the keys, and the values within each key, in a random order
    (`rng`: a numpy Generator). Catalogs list attributes in no fixed order."""
    keys = list(attributes)
    return {keys[k]: [attributes[keys[k]][v] for v in rng.permutation(len(attributes[keys[k]]))] for k in rng.permutation(len(keys))}


def attribute_values(attributes: dict[str, list[str]]) -> list[tuple[str, str]]:
    return [(k, v) for k, values in attributes.items() for v in values]


def category_of(attributes: dict[str, list[str]]) -> str:
    values = attributes.get(CATEGORY_KEY)
    return values[0] if values else "unknown"
