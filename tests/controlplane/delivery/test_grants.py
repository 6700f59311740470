from __future__ import annotations

import pytest

from controlplane.delivery.grants import BundleGrants


def test_a_grant_is_for_one_agent_and_one_digest() -> None:
    grants = BundleGrants()
    grants.grant("agt_a", "sha256:aa")
    assert grants.granted("agt_a", "sha256:aa")
    assert not grants.granted("agt_b", "sha256:aa")
    assert not grants.granted("agt_a", "sha256:bb")
    assert (grants.hits, grants.misses) == (1, 2)


def test_a_full_table_starts_again_empty() -> None:
    grants = BundleGrants(limit=3)
    for n in range(3):
        grants.grant(f"agt_{n}", "sha256:aa")
    grants.grant("agt_0", "sha256:aa")  # known already: nothing changes
    assert len(grants) == 3
    grants.grant("agt_3", "sha256:aa")
    assert len(grants) == 1
    assert grants.granted("agt_3", "sha256:aa")
    assert not grants.granted("agt_0", "sha256:aa")


def test_the_bound_must_hold_something() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        BundleGrants(limit=0)
