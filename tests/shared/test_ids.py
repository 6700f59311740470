from __future__ import annotations

import pytest

from shared.ids import PREFIXES, is_valid_id, new_id


@pytest.mark.parametrize("prefix", sorted(PREFIXES))
def test_shape(prefix: str) -> None:
    value = new_id(prefix)
    assert value.startswith(f"{prefix}_")
    assert len(value) == len(prefix) + 1 + 26
    assert is_valid_id(value, prefix)
    assert not is_valid_id(value, "zzz")


def test_ids_sort_in_creation_order() -> None:
    values = [new_id("org") for _ in range(2000)]
    assert values == sorted(values)
    assert len(set(values)) == len(values)


def test_unknown_prefix_rejected() -> None:
    with pytest.raises(ValueError, match="unknown id prefix"):
        new_id("nope")


@pytest.mark.parametrize(
    "value",
    ["", "org_", "org_short", "ORG_01JD3Q9W6T8ZP2X4B7C5N1M0KQ", "org_01JD3Q9W6T8ZP2X4B7C5N1M0KU"],
)
def test_invalid_shapes(value: str) -> None:
    assert not is_valid_id(value)
