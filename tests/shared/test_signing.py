from __future__ import annotations

import base64
import copy
import json
import math
import re
from datetime import UTC, datetime
from typing import Any, cast

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.signing import (
    CLOCK_SKEW_SECONDS,
    MAX_DEPTH,
    MAX_SAFE_INTEGER,
    MAX_SIGNATURES,
    BadSignatureError,
    CanonicalizationError,
    Envelope,
    ExpiredError,
    KeyRetiredError,
    KeySet,
    MalformedError,
    NotYetValidError,
    PublicKey,
    Signature,
    StaleKeySetError,
    UnknownKeyError,
    VerificationError,
    WrongEnvironmentError,
    WrongOrganizationError,
    canonical_bytes,
    decode_envelope,
    decode_keyset,
    encode_envelope,
    kid_for,
    new_signing_key,
    public_key_of,
    sign_keyset,
    sign_payload,
    verify_envelope,
    verify_keyset_update,
)

NOW = 1_700_000_000
T = NOW - 10
ORG = "org_01JD3Q9W6T8ZP2X4B7C5N1M0KQ"

KEY_A = new_signing_key()
KEY_B = new_signing_key()
KEY_C = new_signing_key()
KID_A, KID_B, KID_C = KEY_A[0], KEY_B[0], KEY_C[0]

MANIFEST: dict[str, Any] = {
    "deployment_id": "dep_x",
    "sequence": 7,
    "bundle_digest": "sha256:" + "ab" * 32,
    "bundle_size": 123,
    "spec_hash": "sha256:" + "cd" * 32,
    "environment_id": "env_a",
    "issued_at": T,
    "expires_at": T + 3600,
}


def keyset_of(
    *pairs: tuple[str, Ed25519PrivateKey],
    version: int = 1,
    org_id: str = ORG,
    not_after: dict[str, int] | None = None,
) -> KeySet:
    retire = not_after or {}
    return KeySet(
        org_id=org_id,
        version=version,
        keys=[public_key_of(kid, key, retire.get(kid)) for kid, key in pairs],
        issued_at=T,
    )


KEYSET = keyset_of(KEY_A)
SIGNED = sign_payload(MANIFEST, [KEY_A])


def verify(envelope: Envelope, keyset: KeySet = KEYSET, **kwargs: Any) -> dict[str, Any]:
    return verify_envelope(envelope, keyset, now=kwargs.pop("now", NOW), **kwargs)


def with_payload(envelope: Envelope, payload: dict[str, Any]) -> Envelope:
    return Envelope(payload=payload, signatures=list(envelope.signatures))


def with_sig(envelope: Envelope, sig: str) -> Envelope:
    (signature,) = envelope.signatures
    return Envelope(
        payload=dict(envelope.payload),
        signatures=[msgspec.structs.replace(signature, sig=sig)],
    )


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def raw_sig(envelope: Envelope) -> bytes:
    sig = envelope.signatures[0].sig
    return base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4))


def flipped(sig: str, bit: int) -> str:
    raw = bytearray(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)))
    raw[bit // 8] ^= 1 << (bit % 8)
    return b64url(bytes(raw))


def flip_bit(envelope: Envelope, bit: int) -> Envelope:
    return with_sig(envelope, flipped(envelope.signatures[0].sig, bit))


# --- the happy path ---------------------------------------------------------------------------


def test_signed_manifest_verifies() -> None:
    assert verify(SIGNED) == MANIFEST
    assert verify(SIGNED, expected_environment_id="env_a") == MANIFEST
    (signature,) = SIGNED.signatures
    assert signature.kid == KID_A
    assert re.fullmatch(r"[A-Za-z0-9_-]{86}", signature.sig)


def test_sign_payload_copies_the_payload() -> None:
    payload = copy.deepcopy(MANIFEST) | {"tags": ["a"]}
    envelope = sign_payload(payload, [KEY_A])
    payload["tags"].append("b")
    payload["sequence"] = 8
    assert verify(envelope)["tags"] == ["a"]


def test_sign_payload_signs_with_every_key() -> None:
    envelope = sign_payload(MANIFEST, [KEY_A, KEY_B])
    assert [s.kid for s in envelope.signatures] == [KID_A, KID_B]
    assert verify(envelope, keyset_of(KEY_A)) == MANIFEST
    assert verify(envelope, keyset_of(KEY_B)) == MANIFEST


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ([], "at least one"),
        ([KEY_A, KEY_A], "distinct kid"),
        ([KEY_A] * (MAX_SIGNATURES + 1), "at most"),
    ],
)
def test_sign_payload_refuses_unusable_keys(
    keys: list[tuple[str, Ed25519PrivateKey]], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        sign_payload(MANIFEST, keys)


def test_kids() -> None:
    kid, key = new_signing_key()
    assert re.fullmatch(r"kid_[0-9a-f]{16}", kid)
    assert kid == kid_for(key.public_key())
    assert kid != KID_A
    entry = public_key_of(kid, key, not_after=5)
    assert entry == PublicKey(kid=kid, public_key=entry.public_key, not_after=5)
    assert entry.alg == "Ed25519"
    assert len(entry.public_key) == 43


# --- tampering --------------------------------------------------------------------------------


def tampered(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    return value + "x"


@pytest.mark.parametrize("field", sorted(MANIFEST))
def test_changing_any_field_breaks_the_signature(field: str) -> None:
    payload = dict(SIGNED.payload)
    payload[field] = tampered(payload[field])
    with pytest.raises(BadSignatureError):
        verify(with_payload(SIGNED, payload))


@pytest.mark.parametrize("field", sorted(MANIFEST))
def test_changing_the_type_of_any_field_breaks_the_signature(field: str) -> None:
    payload = dict(SIGNED.payload)
    value = payload[field]
    payload[field] = str(value) if isinstance(value, int) else [value]
    with pytest.raises((BadSignatureError, MalformedError)):
        verify(with_payload(SIGNED, payload))


@pytest.mark.parametrize("field", sorted(MANIFEST))
def test_removing_any_field_breaks_the_signature(field: str) -> None:
    payload = {k: v for k, v in SIGNED.payload.items() if k != field}
    with pytest.raises(BadSignatureError):
        verify(with_payload(SIGNED, payload))


@pytest.mark.parametrize("extra", [None, 0, "", False, [], {}])
def test_adding_a_field_breaks_the_signature(extra: Any) -> None:
    payload = dict(SIGNED.payload) | {"rollback": extra}
    with pytest.raises(BadSignatureError):
        verify(with_payload(SIGNED, payload))


@pytest.mark.parametrize("bit", [0, 7, 256, 263, 504, 511], ids=lambda b: f"bit{b}")
def test_flipping_a_signature_bit_breaks_it(bit: int) -> None:
    with pytest.raises(BadSignatureError):
        verify(flip_bit(SIGNED, bit))


@given(bit=st.integers(min_value=0, max_value=511))
def test_flipping_any_signature_bit_breaks_it(bit: int) -> None:
    with pytest.raises(BadSignatureError):
        verify(flip_bit(SIGNED, bit))


GOOD_SIG = SIGNED.signatures[0].sig


def _non_canonical_tail(sig: str) -> str:
    # The last of the 86 characters carries 2 signature bits and 4 unused ones; set one unused bit.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    return sig[:-1] + alphabet[alphabet.index(sig[-1]) | 1]


@pytest.mark.parametrize(
    "sig",
    [
        pytest.param(GOOD_SIG[:-1], id="truncated-char"),
        pytest.param(GOOD_SIG[:-4], id="truncated-bytes"),
        pytest.param(b64url(raw_sig(SIGNED)[:63]), id="63-bytes"),
        pytest.param(GOOD_SIG + "A", id="extended-char"),
        pytest.param(b64url(raw_sig(SIGNED) + b"\0"), id="65-bytes"),
        pytest.param(GOOD_SIG + "==", id="padded"),
        pytest.param(base64.b64encode(raw_sig(SIGNED)).decode(), id="standard-alphabet"),
        pytest.param(_non_canonical_tail(GOOD_SIG), id="non-canonical-tail"),
        pytest.param(" " + GOOD_SIG[1:], id="space"),
        pytest.param("!" * 86, id="garbage-86"),
        pytest.param("é" * 86, id="non-ascii"),
        pytest.param("", id="empty"),
        pytest.param("A" * 86, id="zeros"),
        pytest.param(b64url(b"\xff" * 64), id="ones"),
    ],
)
def test_mangled_signature_text_is_refused(sig: str) -> None:
    with pytest.raises((BadSignatureError, MalformedError)):
        verify(with_sig(SIGNED, sig))


@given(sig=st.text(max_size=100) | st.binary(max_size=70).map(b64url))
def test_arbitrary_signature_text_is_refused(sig: str) -> None:
    with pytest.raises((BadSignatureError, MalformedError)):
        verify(with_sig(SIGNED, sig))


def test_non_canonical_tail_decodes_to_the_same_bytes() -> None:
    # Guards the test above: the lenient decoder would accept it as the very same signature.
    sig = _non_canonical_tail(GOOD_SIG)
    assert sig != GOOD_SIG
    assert base64.urlsafe_b64decode(sig + "==") == raw_sig(SIGNED)


# --- keys -------------------------------------------------------------------------------------


def test_unknown_kid() -> None:
    envelope = Envelope(
        payload=dict(SIGNED.payload),
        signatures=[Signature(kid="kid_0000000000000000", sig=GOOD_SIG)],
    )
    with pytest.raises(UnknownKeyError):
        verify(envelope)


def test_valid_signature_by_a_key_outside_the_keyset() -> None:
    with pytest.raises(UnknownKeyError):
        verify(sign_payload(MANIFEST, [KEY_B]))


def test_signature_by_another_key_under_a_trusted_kid() -> None:
    (forged,) = sign_payload(MANIFEST, [KEY_B]).signatures
    with pytest.raises(BadSignatureError):
        verify(with_sig(SIGNED, forged.sig))


def test_retired_key() -> None:
    keyset = keyset_of(KEY_A, not_after={KID_A: NOW - 1})
    with pytest.raises(KeyRetiredError):
        verify(SIGNED, keyset)


def test_key_valid_through_its_not_after() -> None:
    assert verify(SIGNED, keyset_of(KEY_A, not_after={KID_A: NOW})) == MANIFEST


def test_retired_key_with_a_live_key_still_verifies() -> None:
    envelope = sign_payload(MANIFEST, [KEY_A, KEY_B])
    keyset = keyset_of(KEY_A, KEY_B, not_after={KID_A: NOW - 1})
    assert verify(envelope, keyset) == MANIFEST


@pytest.mark.parametrize("order", ["bad-first", "good-first"])
def test_one_bad_and_one_good_signature_is_accepted(order: str) -> None:
    """During a rotation overlap an envelope carries several signatures; one acceptable suffices.

    The signature list is not itself signed, so a failing entry adds no authority: refusing such an
    envelope would only let whoever relays it invalidate it.
    """
    envelope = sign_payload(MANIFEST, [KEY_A, KEY_B])
    good, other = envelope.signatures
    bad = msgspec.structs.replace(other, sig=flipped(other.sig, 3))
    signatures = [bad, good] if order == "bad-first" else [good, bad]
    assert verify(
        Envelope(payload=envelope.payload, signatures=signatures), keyset_of(KEY_A, KEY_B)
    )


def test_mangled_signature_text_next_to_a_good_signature_is_ignored() -> None:
    envelope = sign_payload(MANIFEST, [KEY_A, KEY_B])
    mangled, good = envelope.signatures
    signatures = [msgspec.structs.replace(mangled, sig="abc"), good]
    assert verify(
        Envelope(payload=envelope.payload, signatures=signatures), keyset_of(KEY_A, KEY_B)
    )


def test_unknown_kid_next_to_a_good_signature_is_ignored() -> None:
    envelope = sign_payload(MANIFEST, [KEY_C, KEY_A])
    assert verify(envelope) == MANIFEST


def test_bad_signature_is_reported_over_retired_key() -> None:
    envelope = sign_payload(MANIFEST, [KEY_A, KEY_B])
    keyset = keyset_of(KEY_A, KEY_B, not_after={KID_A: NOW - 1})
    tampered_payload = dict(envelope.payload) | {"sequence": 8}
    with pytest.raises(BadSignatureError):
        verify(with_payload(envelope, tampered_payload), keyset)


# --- payload checks ---------------------------------------------------------------------------


def test_expired() -> None:
    assert verify(SIGNED, now=T + 3600) == MANIFEST
    with pytest.raises(ExpiredError):
        verify(SIGNED, now=T + 3601)


@pytest.mark.parametrize("field", ["issued_at", "not_before"])
def test_not_yet_valid(field: str) -> None:
    payload = MANIFEST | {field: NOW + CLOCK_SKEW_SECONDS, "expires_at": NOW + 7200}
    assert verify(sign_payload(payload, [KEY_A])) == payload
    payload[field] += 1
    with pytest.raises(NotYetValidError):
        verify(sign_payload(payload, [KEY_A]))


@pytest.mark.parametrize("expected", ["env_b", "", "ENV_A"])
def test_wrong_environment(expected: str) -> None:
    with pytest.raises(WrongEnvironmentError):
        verify(SIGNED, expected_environment_id=expected)


def test_missing_environment_when_one_is_expected() -> None:
    payload = {k: v for k, v in MANIFEST.items() if k != "environment_id"}
    envelope = sign_payload(payload, [KEY_A])
    assert verify(envelope) == payload
    with pytest.raises(WrongEnvironmentError):
        verify(envelope, expected_environment_id="env_a")


def test_payload_without_time_fields() -> None:
    payload = {"record": "cfb_x", "expires_at": None}
    assert verify(sign_payload(payload, [KEY_A]), now=0) == payload


@pytest.mark.parametrize("field", ["expires_at", "issued_at", "not_before"])
@pytest.mark.parametrize("value", ["soon", True, [1], {"s": 1}])
def test_signed_but_mistyped_time_fields_are_malformed(field: str, value: Any) -> None:
    with pytest.raises(MalformedError):
        verify(sign_payload(MANIFEST | {field: value}, [KEY_A]))


def test_signature_is_checked_before_the_payload() -> None:
    payload = dict(SIGNED.payload) | {"expires_at": 0, "environment_id": "env_b"}
    with pytest.raises(BadSignatureError):
        verify(with_payload(SIGNED, payload), expected_environment_id="env_a")


# --- structure --------------------------------------------------------------------------------


def test_empty_signatures() -> None:
    with pytest.raises(MalformedError):
        verify(Envelope(payload=dict(MANIFEST), signatures=[]))


def test_too_many_signatures() -> None:
    signatures = [SIGNED.signatures[0]] * (MAX_SIGNATURES + 1)
    with pytest.raises(MalformedError):
        verify(Envelope(payload=dict(MANIFEST), signatures=signatures))


@pytest.mark.parametrize(
    "envelope",
    [
        pytest.param(None, id="none"),
        pytest.param({"payload": MANIFEST, "signatures": []}, id="dict"),
        pytest.param(Envelope(payload=cast("Any", [1]), signatures=SIGNED.signatures), id="list"),
        pytest.param(Envelope(payload=cast("Any", None), signatures=SIGNED.signatures), id="null"),
        pytest.param(Envelope(payload=MANIFEST, signatures=cast("Any", None)), id="no-sigs"),
        pytest.param(Envelope(payload=MANIFEST, signatures=cast("Any", [GOOD_SIG])), id="str-sig"),
        pytest.param(
            Envelope(payload=MANIFEST, signatures=[Signature(kid=KID_A, sig=cast("Any", 5))]),
            id="int-sig",
        ),
        pytest.param(
            Envelope(payload=MANIFEST, signatures=[Signature(kid=cast("Any", None), sig="x")]),
            id="null-kid",
        ),
        pytest.param(
            Envelope(payload=MANIFEST | {"ratio": 0.5}, signatures=SIGNED.signatures), id="float"
        ),
        pytest.param(
            Envelope(payload=cast("Any", {1: "x"}), signatures=SIGNED.signatures), id="int-key"
        ),
    ],
)
def test_structurally_invalid_envelopes(envelope: Any) -> None:
    with pytest.raises(MalformedError):
        verify(envelope)


@pytest.mark.parametrize(
    "keyset",
    [
        pytest.param(None, id="none"),
        pytest.param(msgspec.to_builtins(KEYSET), id="dict"),
        pytest.param(msgspec.structs.replace(KEYSET, keys=[]), id="no-keys"),
        pytest.param(msgspec.structs.replace(KEYSET, org_id=""), id="no-org"),
        pytest.param(msgspec.structs.replace(KEYSET, version=-1), id="negative-version"),
        pytest.param(msgspec.structs.replace(KEYSET, version=cast("Any", "1")), id="str-version"),
        pytest.param(msgspec.structs.replace(KEYSET, keys=KEYSET.keys * 2), id="duplicate-kid"),
        pytest.param(
            msgspec.structs.replace(
                KEYSET, keys=[msgspec.structs.replace(KEYSET.keys[0], public_key="A" * 42)]
            ),
            id="short-key",
        ),
        pytest.param(
            msgspec.structs.replace(
                KEYSET, keys=[msgspec.structs.replace(KEYSET.keys[0], alg=cast("Any", "RS256"))]
            ),
            id="alg",
        ),
        pytest.param(
            msgspec.structs.replace(
                KEYSET, keys=[msgspec.structs.replace(KEYSET.keys[0], not_after=cast("Any", 1.5))]
            ),
            id="float-not-after",
        ),
    ],
)
def test_malformed_keysets_are_refused(keyset: Any) -> None:
    with pytest.raises(MalformedError):
        verify(SIGNED, keyset)


# --- canonical bytes --------------------------------------------------------------------------


def test_canonical_bytes_known_answer() -> None:
    payload = {"b": 1, "a": [True, False, None, 'é\n"\\\x01'], "c": {"z": -5, "y": {}}, "": []}
    expected = '{"":[],"a":[true,false,null,"é\\n\\"\\\\\\u0001"],"b":1,"c":{"y":{},"z":-5}}'
    assert canonical_bytes(payload) == expected.encode("utf-8")


def test_canonical_bytes_orders_keys_by_utf16_code_units() -> None:
    # RFC 8785: U+1F600 is the surrogate pair D83D DE00, which sorts before U+FFFF.
    assert canonical_bytes({"\uffff": 1, "\U0001f600": 2, "a": 3}) == (
        '{"a":3,"\U0001f600":2,"\uffff":1}'.encode()
    )


def test_canonical_bytes_accepts_tuples_and_mappings_as_json() -> None:
    assert canonical_bytes({"a": (1, 2), "b": msgspec.json.decode(b'{"x":[]}')}) == (
        b'{"a":[1,2],"b":{"x":[]}}'
    )


json_scalars = (
    st.none() | st.booleans() | st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER) | st.text()
)
canonical_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=20,
)


@given(
    payload=st.dictionaries(st.text(max_size=6), canonical_values, max_size=8),
    data=st.data(),
)
def test_canonical_bytes_ignores_insertion_order(
    payload: dict[str, Any], data: st.DataObject
) -> None:
    order = data.draw(st.permutations(list(payload)))
    shuffled = {key: payload[key] for key in order}
    encoded = canonical_bytes(payload)
    assert canonical_bytes(shuffled) == encoded
    assert json.loads(encoded) == payload
    assert canonical_bytes(json.loads(encoded)) == encoded


@pytest.mark.parametrize(
    "value",
    [1.5, 0.0, 1e300, math.nan, math.inf, -math.inf],
    ids=["float", "zero", "huge", "nan", "inf", "-inf"],
)
@pytest.mark.parametrize("where", ["top", "list", "nested"])
def test_canonical_bytes_rejects_floats(value: float, where: str) -> None:
    cases: dict[str, dict[str, Any]] = {
        "top": {"x": value},
        "list": {"x": [1, value]},
        "nested": {"x": {"y": [{"z": value}]}},
    }
    payload = cases[where]
    with pytest.raises(CanonicalizationError, match="float"):
        canonical_bytes(payload)
    with pytest.raises(CanonicalizationError):
        sign_payload(payload, [KEY_A])


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param({"x": b"bytes"}, id="bytes"),
        pytest.param({"x": {1, 2}}, id="set"),
        pytest.param({"x": datetime(2024, 1, 1, tzinfo=UTC)}, id="datetime"),
        pytest.param({"x": object()}, id="object"),
        pytest.param({1: "x"}, id="int-key"),
        pytest.param({("a",): "x"}, id="tuple-key"),
        pytest.param({"x": MAX_SAFE_INTEGER + 1}, id="big-int"),
        pytest.param({"x": -MAX_SAFE_INTEGER - 1}, id="big-negative-int"),
        pytest.param({"x": "\ud800"}, id="lone-surrogate"),
        pytest.param({"\udc00": 1}, id="lone-surrogate-key"),
        pytest.param([1], id="top-level-list"),
        pytest.param("x", id="top-level-string"),
        pytest.param(None, id="top-level-null"),
    ],
)
def test_canonical_bytes_rejects_non_json(payload: Any) -> None:
    with pytest.raises(CanonicalizationError):
        canonical_bytes(payload)


def test_canonical_bytes_limits_nesting_and_cycles() -> None:
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(200):
        node["x"] = {}
        node = node["x"]
    with pytest.raises(CanonicalizationError, match="deeper"):
        canonical_bytes(deep)
    cycle: dict[str, Any] = {}
    cycle["self"] = cycle
    with pytest.raises(CanonicalizationError):
        canonical_bytes(cycle)
    assert canonical_bytes({"safe": [MAX_SAFE_INTEGER, -MAX_SAFE_INTEGER]})


# --- key set updates --------------------------------------------------------------------------


def test_keyset_round_trip() -> None:
    envelope = sign_keyset(KEYSET, [KEY_A])
    assert envelope.payload == msgspec.to_builtins(KEYSET)
    assert decode_keyset(envelope) == KEYSET
    assert decode_keyset(decode_envelope(encode_envelope(envelope))) == KEYSET
    assert verify(envelope) == envelope.payload


def test_keyset_update_signed_by_pinned_key_is_accepted() -> None:
    new = keyset_of(KEY_A, KEY_B, version=2, not_after={KID_A: NOW + 86400})
    assert verify_keyset_update(KEYSET, sign_keyset(new, [KEY_A, KEY_B]), now=NOW) == new
    assert verify_keyset_update(KEYSET, sign_keyset(new, [KEY_A]), now=NOW) == new


def test_keyset_rotation_chain() -> None:
    v2 = keyset_of(KEY_A, KEY_B, version=2, not_after={KID_A: NOW + 100})
    v3 = keyset_of(KEY_B, version=3)
    pinned = verify_keyset_update(KEYSET, sign_keyset(v2, [KEY_A, KEY_B]), now=NOW)
    update = sign_keyset(v3, [KEY_B])
    with pytest.raises(UnknownKeyError):  # v1 never trusted B: apply v2 first
        verify_keyset_update(KEYSET, update, now=NOW + 200)
    pinned = verify_keyset_update(pinned, update, now=NOW + 200)
    assert pinned == v3
    # Manifests signed by the retired key stop verifying; those by the new key verify.
    with pytest.raises(UnknownKeyError):
        verify(SIGNED, pinned)
    assert verify(sign_payload(MANIFEST, [KEY_B]), pinned) == MANIFEST


def test_keyset_update_signed_only_by_the_new_key_is_refused() -> None:
    new = keyset_of(KEY_A, KEY_B, version=2)
    with pytest.raises(UnknownKeyError):
        verify_keyset_update(KEYSET, sign_keyset(new, [KEY_B]), now=NOW)


def test_keyset_update_replacing_all_keys_by_an_attacker_is_refused() -> None:
    new = keyset_of(KEY_C, version=2)
    with pytest.raises(UnknownKeyError):
        verify_keyset_update(KEYSET, sign_keyset(new, [KEY_C]), now=NOW)


def test_keyset_update_signed_by_a_retired_pinned_key_is_refused() -> None:
    pinned = keyset_of(KEY_A, KEY_B, not_after={KID_A: NOW - 1})
    new = keyset_of(KEY_A, KEY_C, version=2)
    with pytest.raises(KeyRetiredError):
        verify_keyset_update(pinned, sign_keyset(new, [KEY_A]), now=NOW)


def test_tampered_keyset_update_is_refused() -> None:
    envelope = sign_keyset(keyset_of(KEY_A, version=2), [KEY_A])
    payload = copy.deepcopy(envelope.payload)
    payload["keys"].append(msgspec.to_builtins(public_key_of(KID_C, KEY_C[1])))
    with pytest.raises(BadSignatureError):
        verify_keyset_update(KEYSET, with_payload(envelope, payload), now=NOW)


@pytest.mark.parametrize("version", [1, 0])
def test_stale_keyset_update_is_refused(version: int) -> None:
    pinned = keyset_of(KEY_A, version=1)
    with pytest.raises(StaleKeySetError) as caught:
        verify_keyset_update(
            pinned, sign_keyset(keyset_of(KEY_A, version=version), [KEY_A]), now=NOW
        )
    assert caught.value.reason == "stale_keyset"


def test_replayed_older_keyset_is_refused() -> None:
    v1_envelope = sign_keyset(KEYSET, [KEY_A])
    v2 = verify_keyset_update(
        KEYSET, sign_keyset(keyset_of(KEY_A, KEY_B, version=2), [KEY_A]), now=NOW
    )
    with pytest.raises(StaleKeySetError):
        verify_keyset_update(v2, v1_envelope, now=NOW)


def test_keyset_update_for_another_org_is_refused() -> None:
    other = keyset_of(KEY_A, version=2, org_id="org_01JD3Q9W6T8ZP2X4B7C5N1M0KR")
    with pytest.raises(WrongOrganizationError):
        verify_keyset_update(KEYSET, sign_keyset(other, [KEY_A]), now=NOW)


def test_keyset_update_must_be_a_keyset() -> None:
    with pytest.raises(MalformedError):
        verify_keyset_update(KEYSET, SIGNED, now=NOW)


def test_keyset_issued_in_the_future_is_refused() -> None:
    new = msgspec.structs.replace(keyset_of(KEY_A, version=2), issued_at=NOW + 3600)
    with pytest.raises(NotYetValidError):
        verify_keyset_update(KEYSET, sign_keyset(new, [KEY_A]), now=NOW)


GOOD_KEYSET_PAYLOAD: dict[str, Any] = msgspec.to_builtins(KEYSET)


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param({}, id="empty"),
        pytest.param({**GOOD_KEYSET_PAYLOAD, "version": "2"}, id="str-version"),
        pytest.param({**GOOD_KEYSET_PAYLOAD, "version": True}, id="bool-version"),
        pytest.param({**GOOD_KEYSET_PAYLOAD, "keys": []}, id="no-keys"),
        pytest.param({**GOOD_KEYSET_PAYLOAD, "keys": [{"kid": "k"}]}, id="key-shape"),
        pytest.param(
            {**GOOD_KEYSET_PAYLOAD, "keys": GOOD_KEYSET_PAYLOAD["keys"] * 2}, id="duplicate"
        ),
        pytest.param(
            {**GOOD_KEYSET_PAYLOAD, "keys": [{"kid": "k", "public_key": "AAAA"}]}, id="short-key"
        ),
        pytest.param(
            {**GOOD_KEYSET_PAYLOAD, "keys": [{"kid": "k", "alg": "RS256", "public_key": "x"}]},
            id="alg",
        ),
    ],
)
def test_decode_keyset_rejects_bad_shapes(payload: dict[str, Any]) -> None:
    with pytest.raises(MalformedError):
        decode_keyset(Envelope(payload=payload, signatures=SIGNED.signatures))


def test_decode_keyset_rejects_non_envelopes() -> None:
    with pytest.raises(MalformedError):
        decode_keyset(cast("Any", None))


def test_sign_keyset_refuses_a_malformed_keyset() -> None:
    with pytest.raises(ValueError, match="no keys"):
        sign_keyset(msgspec.structs.replace(KEYSET, keys=[]), [KEY_A])


# --- wire form --------------------------------------------------------------------------------


def test_envelope_round_trip() -> None:
    data = encode_envelope(SIGNED)
    assert isinstance(data, bytes)
    decoded = decode_envelope(data)
    assert decoded == SIGNED
    assert verify(decoded) == MANIFEST


def test_any_json_encoding_of_the_payload_verifies() -> None:
    data = json.dumps(msgspec.to_builtins(SIGNED), indent=2, sort_keys=False).encode()
    assert verify(decode_envelope(data)) == MANIFEST


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"\xff\xfe",
        b"null",
        b"[]",
        b"{}",
        b'{"payload": 1, "signatures": []}',
        b'{"payload": {}, "signatures": [{"kid": 1, "sig": "x"}]}',
        b'{"payload": {}, "signatures": [{"kid": "k"}]}',
        b'{"payload": {"a": "\\ud800"}, "signatures": []}',
        b'{"payload": {}, "signatures": {}}',
        b'{"payload": ' + b"[" * 100_000 + b"]" * 100_000 + b', "signatures": []}',
    ],
)
def test_decode_envelope_rejects_garbage(data: bytes) -> None:
    with pytest.raises(MalformedError):
        decode_envelope(data)


def test_decode_envelope_rejects_non_bytes() -> None:
    with pytest.raises(MalformedError):
        decode_envelope(cast("Any", 5))


# --- robustness -------------------------------------------------------------------------------

any_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=16,
)
kids = st.sampled_from([KID_A, KID_B, "kid_0000000000000000", ""]) | st.text(max_size=20)
sigs = (
    st.sampled_from([GOOD_SIG, GOOD_SIG[:-1], GOOD_SIG + "A", "", "A" * 86])
    | st.text(max_size=100)
    | st.binary(min_size=60, max_size=68).map(b64url)
)
signature_dicts = st.fixed_dictionaries({"kid": kids | any_json, "sig": sigs | any_json})


@st.composite
def payloads(draw: st.DrawFn) -> Any:
    base = draw(st.sampled_from([MANIFEST, GOOD_KEYSET_PAYLOAD, {}]))
    changes = draw(st.dictionaries(st.sampled_from([*MANIFEST, "not_before", "x"]), any_json))
    return draw(st.just(base | changes) | st.just(base) | any_json)


envelope_dicts = st.fixed_dictionaries(
    {
        "payload": payloads(),
        "signatures": st.lists(signature_dicts | any_json, max_size=4) | any_json,
    },
    optional={"extra": any_json},
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(document=envelope_dicts | any_json, expected=st.none() | st.sampled_from(["env_a", "x"]))
def test_verification_only_raises_verification_errors(document: Any, expected: str | None) -> None:
    try:
        envelope = decode_envelope(json.dumps(document).encode())
    except MalformedError:
        return
    outcomes: list[object] = []
    for check in (
        lambda: verify_envelope(envelope, KEYSET, now=NOW, expected_environment_id=expected),
        lambda: verify_keyset_update(KEYSET, envelope, now=NOW),
    ):
        try:
            outcomes.append(check())
        except VerificationError as exc:
            outcomes.append(exc.reason)
    accepted, update = outcomes
    assert isinstance(accepted, str) or accepted in (MANIFEST, GOOD_KEYSET_PAYLOAD)
    assert isinstance(update, str)  # nothing here is a newer key set


# --- errors -----------------------------------------------------------------------------------


REASONS: dict[type[VerificationError], str] = {
    VerificationError: "verification_failed",
    MalformedError: "malformed",
    UnknownKeyError: "unknown_kid",
    KeyRetiredError: "key_retired",
    BadSignatureError: "bad_signature",
    ExpiredError: "expired",
    NotYetValidError: "not_yet_valid",
    WrongEnvironmentError: "wrong_environment",
    StaleKeySetError: "stale_keyset",
    WrongOrganizationError: "wrong_organization",
}


@pytest.mark.parametrize(
    ("error", "reason"), REASONS.items(), ids=lambda v: getattr(v, "__name__", v)
)
def test_error_reasons_are_stable(error: type[VerificationError], reason: str) -> None:
    assert issubclass(error, VerificationError)
    assert error.reason == reason
    assert error("detail").reason == reason


def test_error_reasons_are_distinct() -> None:
    assert len(set(REASONS.values())) == len(REASONS)
    assert not issubclass(CanonicalizationError, VerificationError)


# --- limits -----------------------------------------------------------------------------------


def nested(depth: int, container: str) -> dict[str, Any]:
    """A payload whose objects or arrays nest ``depth`` levels deep (the payload is level 1)."""
    value: Any = 0
    for _ in range(depth - 1):
        value = [value] if container == "list" else {"x": value}
    return {"x": value}


@pytest.mark.parametrize("container", ["dict", "list"])
def test_canonical_bytes_nests_exactly_max_depth_levels(container: str) -> None:
    assert canonical_bytes(nested(MAX_DEPTH, container))
    with pytest.raises(CanonicalizationError, match="deeper"):
        canonical_bytes(nested(MAX_DEPTH + 1, container))


def test_an_envelope_may_carry_max_signatures() -> None:
    keys = [new_signing_key() for _ in range(MAX_SIGNATURES)]
    envelope = sign_payload(MANIFEST, keys)
    assert len(envelope.signatures) == MAX_SIGNATURES
    assert verify(envelope, keyset_of(keys[-1])) == MANIFEST


# --- error messages ---------------------------------------------------------------------------
# The agent reports a refusal's reason *and* its message: the message names what failed (the field,
# the key, the environment), with untrusted values shortened by ``show``.

KEY_D, KEY_E, KEY_F = new_signing_key(), new_signing_key(), new_signing_key()
FIVE_SIGNED = sign_payload(MANIFEST, [KEY_A, KEY_B, KEY_C, KEY_D, KEY_E])


def replaced_key(index: int, **changes: Any) -> KeySet:
    """Two keys (A, B), with entry ``index`` changed."""
    keys = list(keyset_of(KEY_A, KEY_B).keys)
    keys[index] = msgspec.structs.replace(keys[index], **changes)
    return msgspec.structs.replace(KEYSET, keys=keys)


def unsigned(signatures: Any, payload: Any = MANIFEST) -> Envelope:
    return Envelope(payload=cast("Any", payload), signatures=signatures)


REFUSALS: list[Any] = [
    pytest.param(
        lambda: sign_payload(MANIFEST, []),
        ValueError,
        "at least one signing key is required",
        id="no-keys",
    ),
    pytest.param(
        lambda: sign_payload(MANIFEST, [KEY_A, KEY_A]),
        ValueError,
        "each signing key must have a distinct kid",
        id="repeated-kid",
    ),
    pytest.param(lambda: verify(cast("Any", "x")), MalformedError, "not an Envelope", id="type"),
    pytest.param(
        lambda: verify(unsigned(SIGNED.signatures, [])),
        MalformedError,
        "payload is not a JSON object",
        id="payload-not-object",
    ),
    pytest.param(
        lambda: verify(unsigned([])),
        MalformedError,
        "envelope has no signatures",
        id="no-signatures",
    ),
    pytest.param(
        lambda: verify(unsigned(SIGNED.signatures * (MAX_SIGNATURES + 1))),
        MalformedError,
        f"envelope has more than {MAX_SIGNATURES} signatures",
        id="too-many-signatures",
    ),
    pytest.param(
        lambda: verify(unsigned(["x"])),
        MalformedError,
        "signature is not a Signature",
        id="signature-shape",
    ),
    pytest.param(
        lambda: verify(unsigned([Signature(kid=cast("Any", 1), sig="x")])),
        MalformedError,
        "signature kid and sig must be strings",
        id="signature-types",
    ),
    pytest.param(
        lambda: verify(with_payload(SIGNED, MANIFEST | {"amount": 1.5})),
        MalformedError,
        "payload has no canonical form: floats are not allowed in signed payloads (got 1.5)",
        id="no-canonical-form",
    ),
    pytest.param(
        lambda: verify(SIGNED, keyset_of(KEY_A, not_after={KID_A: NOW - 1})),
        KeyRetiredError,
        f"key {KID_A!r} retired at {NOW - 1}",
        id="retired",
    ),
    pytest.param(
        lambda: verify(with_sig(SIGNED, sign_payload(MANIFEST, [KEY_B]).signatures[0].sig)),
        BadSignatureError,
        f"signature by {KID_A!r} does not verify",
        id="bad-signature",
    ),
    pytest.param(
        lambda: verify(with_sig(SIGNED, "abc")),
        BadSignatureError,
        f"signature by {KID_A!r} is not base64url of 64 bytes",
        id="signature-text",
    ),
    pytest.param(
        lambda: verify(FIVE_SIGNED, keyset_of(KEY_F)),
        UnknownKeyError,
        "no signature is by a key of the key set (kids: "
        + ", ".join(repr(s.kid) for s in FIVE_SIGNED.signatures[:4])
        + ")",
        id="unknown-kids",
    ),
    pytest.param(
        lambda: verify(sign_payload(MANIFEST | {"expires_at": "soon"}, [KEY_A])),
        MalformedError,
        "expires_at must be an integer (unix seconds), got 'soon'",
        id="mistyped-time",
    ),
    pytest.param(
        lambda: verify(SIGNED, now=T + 3601),
        ExpiredError,
        f"expired at {T + 3600} (now {T + 3601})",
        id="expired",
    ),
    pytest.param(
        lambda: verify(sign_payload(MANIFEST | {"not_before": NOW + 301}, [KEY_A])),
        NotYetValidError,
        f"not_before {NOW + 301} is in the future (now {NOW})",
        id="not-before",
    ),
    pytest.param(
        lambda: verify(sign_payload(MANIFEST | {"issued_at": NOW + 301}, [KEY_A])),
        NotYetValidError,
        f"issued_at {NOW + 301} is in the future (now {NOW})",
        id="issued-at",
    ),
    pytest.param(
        lambda: verify(SIGNED, expected_environment_id="env_b"),
        WrongEnvironmentError,
        "payload is for environment 'env_a', expected 'env_b'",
        id="wrong-environment",
    ),
    pytest.param(
        lambda: decode_keyset(cast("Any", "x")),
        MalformedError,
        "key set envelope has no JSON object payload",
        id="keyset-envelope",
    ),
    pytest.param(
        lambda: verify_keyset_update(
            KEYSET, sign_keyset(keyset_of(KEY_A, version=2, org_id="org_b"), [KEY_A]), now=NOW
        ),
        WrongOrganizationError,
        f"key set is for 'org_b', pinned set is for {ORG!r}",
        id="wrong-organization",
    ),
    pytest.param(
        lambda: verify_keyset_update(KEYSET, sign_keyset(KEYSET, [KEY_A]), now=NOW),
        StaleKeySetError,
        "key set version 1 is not newer than pinned version 1",
        id="stale-keyset",
    ),
    pytest.param(
        lambda: verify(SIGNED, cast("Any", "x")),
        MalformedError,
        "key set is not a KeySet",
        id="keyset-type",
    ),
    pytest.param(
        lambda: verify(SIGNED, msgspec.structs.replace(KEYSET, org_id="")),
        MalformedError,
        "key set has no org_id",
        id="keyset-org",
    ),
    pytest.param(
        lambda: verify(SIGNED, msgspec.structs.replace(KEYSET, issued_at=-1)),
        MalformedError,
        "key set issued_at must be a non-negative integer",
        id="keyset-issued-at",
    ),
    pytest.param(
        lambda: verify(SIGNED, msgspec.structs.replace(KEYSET, keys=[])),
        MalformedError,
        "key set has no keys",
        id="keyset-no-keys",
    ),
    pytest.param(
        lambda: verify(SIGNED, msgspec.structs.replace(KEYSET, keys=cast("Any", ["x"]))),
        MalformedError,
        "key set entry 0 is not a PublicKey",
        id="entry-type",
    ),
    pytest.param(
        lambda: verify(SIGNED, replaced_key(1, kid="")),
        MalformedError,
        "key set entry 1 has no kid",
        id="entry-empty-kid",
    ),
    pytest.param(
        lambda: verify(SIGNED, replaced_key(1, alg="RS256")),
        MalformedError,
        f"key set entry 1 ({KID_B!r}) has unsupported alg 'RS256'",
        id="entry-alg",
    ),
    pytest.param(
        lambda: verify(SIGNED, replaced_key(1, not_after="soon")),
        MalformedError,
        f"key set entry 1 ({KID_B!r}) has a non-integer not_after",
        id="entry-not-after",
    ),
    pytest.param(
        lambda: verify(SIGNED, replaced_key(1, public_key="AAAA")),
        MalformedError,
        f"key set entry 1 ({KID_B!r}) is not a base64url Ed25519 public key",
        id="entry-public-key",
    ),
    pytest.param(
        lambda: verify(SIGNED, replaced_key(1, kid=KID_A)),
        MalformedError,
        f"key set lists kid {KID_A!r} twice",
        id="entry-repeated",
    ),
    pytest.param(
        lambda: canonical_bytes(cast("Any", [])),
        CanonicalizationError,
        "payload must be a JSON object, not list",
        id="canonical-not-object",
    ),
    pytest.param(
        lambda: canonical_bytes({"n": MAX_SAFE_INTEGER + 1}),
        CanonicalizationError,
        f"integer {MAX_SAFE_INTEGER + 1} is outside +/- (2**53 - 1)",
        id="canonical-integer",
    ),
    pytest.param(
        lambda: canonical_bytes({"s": {1}}),
        CanonicalizationError,
        "set is not a JSON type",
        id="canonical-type",
    ),
    pytest.param(
        lambda: canonical_bytes(cast("Any", {1: 1})),
        CanonicalizationError,
        "object keys must be strings, not int",
        id="canonical-key",
    ),
    pytest.param(
        lambda: canonical_bytes({"s": "\ud800"}),
        CanonicalizationError,
        "string is not valid Unicode (lone surrogate)",
        id="canonical-surrogate",
    ),
    pytest.param(
        lambda: canonical_bytes(nested(MAX_DEPTH + 1, "dict")),
        CanonicalizationError,
        f"nested deeper than {MAX_DEPTH} levels",
        id="canonical-depth",
    ),
]


@pytest.mark.parametrize(("refusal", "error", "message"), REFUSALS)
def test_refusals_say_what_failed(refusal: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error) as caught:
        refusal()
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("kid", "shown"),
    [("k" * 78, repr("k" * 78)), ("k" * 79, "'" + "k" * 76 + "...")],
    ids=["80-characters-in-full", "81-characters-shortened"],
)
def test_messages_show_untrusted_values_in_at_most_80_characters(kid: str, shown: str) -> None:
    with pytest.raises(UnknownKeyError) as caught:
        verify(unsigned([Signature(kid=kid, sig=GOOD_SIG)]))
    assert str(caught.value) == f"no signature is by a key of the key set (kids: {shown})"


def test_prefixes_of_wrapped_errors() -> None:
    with pytest.raises(MalformedError, match=r"^not an envelope: "):
        decode_envelope(b"[]")
    with pytest.raises(MalformedError, match=r"^payload is not a key set: "):
        decode_keyset(unsigned(SIGNED.signatures, {}))
