"""Minted secrets: prefixed, 256 random bits, stored as a digest, shown later only by a hint."""

from __future__ import annotations

import base64
import hashlib

import pytest

from controlplane.auth.secrets import TokenKind, digest_token, digests_match, issue_secret


@pytest.mark.parametrize("kind", list(TokenKind))
def test_a_secret_carries_its_kind_and_exactly_256_random_bits(kind: TokenKind) -> None:
    issued = issue_secret(kind)
    assert issued.token.startswith(kind.value)
    assert TokenKind.of(issued.token) is kind
    random_part = issued.token.removeprefix(kind.value)
    assert len(random_part) == 43  # 32 bytes, URL-safe base64 without padding
    assert len(base64.urlsafe_b64decode(random_part + "=")) == 32
    assert issue_secret(kind).token != issued.token


def test_only_the_digest_is_kept_and_the_hint_shows_the_last_four_characters() -> None:
    issued = issue_secret(TokenKind.PERSONAL)
    assert issued.digest == hashlib.sha256(issued.token.encode()).hexdigest()
    assert issued.digest == digest_token(issued.token)
    assert issued.token not in issued.digest
    assert issued.hint == f"byteor_pat_...{issued.token[-4:]}"
    assert len(issued.hint) == len("byteor_pat_...") + 4


def test_a_digest_matches_its_token_only() -> None:
    issued = issue_secret(TokenKind.AGENT_KEY)
    assert digests_match(issued.digest, issued.token)
    assert not digests_match(issued.digest, issued.token[:-1])
    assert not digests_match(issued.digest, issue_secret(TokenKind.AGENT_KEY).token)


def test_an_unknown_prefix_is_no_kind() -> None:
    assert TokenKind.of("ghp_abcdef") is None
    assert TokenKind.of("") is None
