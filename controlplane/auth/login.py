"""Login state and outcome: the sealed login cookie, single-use states, users and sessions.

A login keeps no server-side state until it comes back: ``/auth/login`` puts ``state``, ``nonce``,
the PKCE verifier and the requested ``redirect_to`` into a short-lived HttpOnly cookie sealed with
AES-256-GCM under a key derived from the key-encryption key (so it is both secret and tamper-proof),
scoped to the callback path. ``/auth/callback`` opens it, compares ``state`` in constant time and
records the state's digest so the same state cannot complete a second login.
"""

from __future__ import annotations

import functools
import hmac
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import msgspec
from cryptography.exceptions import InvalidTag
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from controlplane.auth.secrets import TokenKind, digest_token
from controlplane.auth.service import new_token_row, revoke_token
from controlplane.db.models import (
    LoginStateRow,
    MembershipRow,
    OrganizationRow,
    UserIdentityRow,
    UserRow,
)
from controlplane.db.types import utcnow
from controlplane.errors import BadRequest, Conflict, Forbidden, NotFound
from shared.ids import new_id
from shared.roles import PrincipalKind

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from controlplane.auth.oidc import IdentityClaims
    from controlplane.auth.secrets import IssuedSecret
    from controlplane.db.models import ApiTokenRow
    from controlplane.settings import Settings
    from controlplane.signing.kek import KeyEncryptionKey

__all__ = [
    "LOGIN_COOKIE",
    "SESSION_COOKIE",
    "LoginFlow",
    "SignedIn",
    "consume_state",
    "end_session",
    "issue_session",
    "new_flow",
    "open_flow",
    "safe_redirect",
    "seal_flow",
    "sign_in",
    "states_match",
]

logger = logging.getLogger("byteor.controlplane.auth")

LOGIN_COOKIE = "byteor_login"
SESSION_COOKIE = "byteor_session"
#: HKDF purpose of the key that seals login cookies (distinct from the one sealing signing keys).
COOKIE_KEY_PURPOSE = "byteor/login-cookie/v1"
MAX_REDIRECT_LENGTH = 2048


class LoginFlow(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What the login cookie carries between ``/auth/login`` and ``/auth/callback``."""

    state: str
    nonce: str
    code_verifier: str
    redirect_to: str | None
    #: Unix seconds after which the login is refused.
    expires: int

    @property
    def expires_at(self) -> datetime:
        return datetime.fromtimestamp(self.expires, tz=UTC)


def new_flow(settings: Settings, redirect_to: str | None) -> LoginFlow:
    """Fresh random ``state``, ``nonce`` and PKCE verifier (RFC 7636: 43-128 characters)."""
    return LoginFlow(
        state=secrets.token_urlsafe(32),
        nonce=secrets.token_urlsafe(32),
        code_verifier=secrets.token_urlsafe(64),
        redirect_to=redirect_to,
        expires=int(time.time()) + settings.login_timeout_seconds,
    )


@functools.lru_cache(maxsize=8)
def cookie_key(kek: KeyEncryptionKey) -> KeyEncryptionKey:
    """The login-cookie key derived from ``kek`` (derived once per KEK, not per request)."""
    return kek.derive(COOKIE_KEY_PURPOSE)


def seal_flow(kek: KeyEncryptionKey, flow: LoginFlow) -> str:
    return cookie_key(kek).seal(msgspec.json.encode(flow), LOGIN_COOKIE)


def open_flow(kek: KeyEncryptionKey, sealed: str) -> LoginFlow:
    """The login in the cookie, or a 400 when it was altered, forged or has timed out."""
    try:
        raw = cookie_key(kek).unseal(sealed, LOGIN_COOKIE)
        flow = msgspec.json.decode(raw, type=LoginFlow)
    except (InvalidTag, ValueError, msgspec.DecodeError):
        raise BadRequest(
            "The login cookie is not valid (altered, or from another server); "
            "start again at /auth/login"
        ) from None
    if flow.expires <= time.time():
        raise BadRequest("The login took too long and has expired; start again at /auth/login")
    return flow


def states_match(presented: str, expected: str) -> bool:
    """Constant-time comparison of the callback's ``state`` with the cookie's."""
    return hmac.compare_digest(presented.encode(), expected.encode())


def safe_redirect(value: str | None) -> str | None:
    """``value`` if it is a path on this origin (``/…``, not ``//host`` or a URL), else a 400."""
    if value is None or value == "":
        return None
    refused = BadRequest(
        "redirect_to must be a path on this server, such as /orgs (not a URL or //host)"
    )
    if len(value) > MAX_REDIRECT_LENGTH or not value.startswith("/") or value.startswith("//"):
        raise refused
    # Printable ASCII only (percent-encode the rest): it goes into a Location header as is.
    if "\\" in value or any(not 0x21 <= ord(c) <= 0x7E for c in value):
        raise refused
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        raise refused
    return value


async def consume_state(session: AsyncSession, flow: LoginFlow) -> None:
    """Record that ``flow.state`` came back; a second time is a 400 (a replayed callback)."""
    now = utcnow()
    await session.execute(delete(LoginStateRow).where(LoginStateRow.expires_at < now))
    session.add(LoginStateRow(state_digest=digest_token(flow.state), expires_at=flow.expires_at))
    try:
        await session.commit()
    except IntegrityError:
        await session.rollback()
        raise BadRequest(
            "This login was already completed (the state was used before); "
            "start again at /auth/login"
        ) from None


@dataclass(frozen=True, slots=True)
class SignedIn:
    user_id: str
    email: str | None
    name: str
    created: bool


def admitted(settings: Settings, email: str) -> bool:
    """Whether an uninvited person may sign up: their address or its domain is allowed."""
    domain = email.rpartition("@")[2]
    return email in settings.oidc_allowed_emails or domain in settings.oidc_allowed_email_domains


async def sign_in(session: AsyncSession, settings: Settings, identity: IdentityClaims) -> SignedIn:
    """The user behind ``identity``: by ``(issuer, subject)``, else linked by verified e-mail.

    A person seen for the first time is linked to the user their verified e-mail address was
    invited as; an uninvited person is created only when their address or domain is allowed, and
    joins no organization unless ``oidc_auto_join_org_id`` is set. Nothing is committed here.
    """
    now = utcnow()
    link = await session.scalar(
        select(UserIdentityRow).where(
            UserIdentityRow.issuer == identity.issuer,
            UserIdentityRow.subject == identity.subject,
        )
    )
    if link is not None:
        known = await session.get(UserRow, link.user_id)
        if known is None:  # pragma: no cover - deleting a user deletes its identities
            raise NotFound("The user of this login no longer exists")
        link.last_login_at = now
        if identity.email and identity.email_verified:
            link.email = identity.email
        return SignedIn(known.id, known.email, known.name, created=False)
    email = identity.email
    if not email:
        raise Forbidden(
            "The identity provider did not share an e-mail address; "
            "the login needs the email scope and claim"
        )
    if not identity.email_verified:
        raise Forbidden(
            f"The identity provider has not verified {email}; verify it there and log in again"
        )
    if not email.isascii():
        raise Forbidden(f"{email} is not supported: only ASCII e-mail addresses can sign in")
    user = await session.scalar(select(UserRow).where(UserRow.email == email))
    created = False
    if user is not None:
        # Link by address only for someone not yet known at this provider: a second subject
        # with the same address (a recycled address, a re-created account) must not inherit it.
        subjects = set(
            await session.scalars(
                select(UserIdentityRow.subject).where(
                    UserIdentityRow.user_id == user.id, UserIdentityRow.issuer == identity.issuer
                )
            )
        )
        if identity.subject in subjects:
            # This very subject was linked a moment ago by a concurrent login of the same person.
            return SignedIn(user.id, user.email, user.name, created=False)
        if subjects:
            raise Forbidden(
                f"{email} already belongs to another account at this identity provider; "
                "an organization admin must resolve it"
            )
    if user is None:
        if not admitted(settings, email):
            raise Forbidden(
                f"{email} has not been invited: ask an organization admin to invite this address"
            )
        user = UserRow(
            id=new_id("usr"),
            kind=PrincipalKind.HUMAN.value,
            name=identity.name or email,
            email=email,
        )
        session.add(user)
        await session.flush()
        created = True
        await _auto_join(session, settings, user.id)
    elif (
        user.kind != PrincipalKind.HUMAN.value
    ):  # pragma: no cover - service accounts have no e-mail
        raise Forbidden("This e-mail address belongs to a service account")
    elif identity.name and user.name == user.email:
        user.name = identity.name  # an invitation names a person by address until they log in
    session.add(
        UserIdentityRow(
            id=new_id("idn"),
            user_id=user.id,
            issuer=identity.issuer,
            subject=identity.subject,
            email=email,
            created_at=now,
            last_login_at=now,
        )
    )
    return SignedIn(user.id, user.email, user.name, created=created)


async def _auto_join(session: AsyncSession, settings: Settings, user_id: str) -> None:
    org_id = settings.oidc_auto_join_org_id
    if org_id is None:
        return
    if await session.get(OrganizationRow, org_id) is None:
        logger.warning("BYTEOR_CLOUD_OIDC_AUTO_JOIN_ORG_ID names no organization: %s", org_id)
        return
    session.add(
        MembershipRow(org_id=org_id, user_id=user_id, role=settings.oidc_auto_join_role.value)
    )


async def issue_session(
    session: AsyncSession, settings: Settings, signed_in: SignedIn
) -> tuple[ApiTokenRow, IssuedSecret]:
    """Commit the login: the user (if new), its identity link and a new session token."""
    row, secret = new_token_row(
        signed_in.user_id,
        "login session",
        settings.session_ttl_seconds,
        kind=TokenKind.SESSION,
    )
    session.add(row)
    try:
        await session.commit()
    except IntegrityError:
        await session.rollback()
        raise Conflict(
            "Another login for this person finished at the same time; log in again"
        ) from None
    return row, secret


async def end_session(session: AsyncSession, user_id: str, token_id: str) -> None:
    """Revoke a session token (logout)."""
    await revoke_token(session, user_id, token_id)
