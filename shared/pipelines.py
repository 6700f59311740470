"""REST models for pipeline drafts, versions, config bundles and signing keys."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from msgspec import UNSET, Meta, UnsetType

from shared.base import RestInput, RestOutput
from shared.resources import Name
from shared.signing import Envelope
from shared.spec import Diagnostic

__all__ = [
    "ConfigBundle",
    "ConfigBundleCreate",
    "Draft",
    "DraftCreate",
    "DraftUpdate",
    "KeyRotation",
    "Preview",
    "RuntimeConfigPreview",
    "SigningKeyInfo",
    "SigningKeys",
    "Version",
]

#: An authoring plan: any JSON object; the validator reports what is wrong with it.
Plan = dict[str, Any]
BundleStatus = Literal["building", "ready", "failed"]


class DraftCreate(RestInput):
    name: Name
    plan: Plan


class DraftUpdate(RestInput):
    name: Name | UnsetType = UNSET
    plan: Plan | UnsetType = UNSET


class Draft(RestOutput):
    id: str
    org_id: str
    environment_id: str
    name: str
    plan: Plan
    revision: int
    created_at: datetime
    updated_at: datetime


class Preview(RestOutput):
    """A dry run: what promoting the draft now would produce. Nothing is stored."""

    ok: bool
    spec_kv: str | None
    spec_hash: str | None
    diagnostics: list[Diagnostic]
    revision: int


class Version(RestOutput):
    id: str
    org_id: str
    environment_id: str
    draft_id: str
    number: int
    draft_revision: int
    plan: Plan
    spec_kv: str
    spec_hash: str
    created_by: str | None
    created_at: datetime


class ConfigBundleCreate(RestInput):
    pipeline_version_id: str


class ConfigBundle(RestOutput):
    id: str
    org_id: str
    environment_id: str
    pipeline_version_id: str
    status: BundleStatus
    spec_hash: str
    tuning_profile: str
    runtime_config: dict[str, Any]
    digest: str | None
    size: int | None
    signature: Envelope | None
    error: str | None
    created_by: str | None
    created_at: datetime
    updated_at: datetime


class RuntimeConfigPreview(RestOutput):
    """The three layers and their merge, as a bundle built now would carry it."""

    organization: dict[str, Any]
    project: dict[str, Any]
    environment: dict[str, Any]
    merged: dict[str, Any]
    tuning_profile: str


class KeyRotation(RestInput):
    overlap_seconds: Annotated[int, Meta(ge=0, le=90 * 86400)] | None = None


class SigningKeyInfo(RestOutput):
    kid: str
    public_key: str
    active: bool
    not_after: datetime | None
    created_at: datetime


class SigningKeys(RestOutput):
    """The organization's keys (public halves) and the signed key set agents pin."""

    keys: list[SigningKeyInfo]
    keyset: Envelope
