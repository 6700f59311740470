"""Activating deployment manifests on this host: refuse bad ones before touching the live bundle.

:meth:`Activator.apply` runs these steps in order, journaling each in ``activation.json``:

a. ``verified``: the manifest's signature against the pinned key set, its expiry, environment,
   organization and agent, and ``sequence > last_sequence`` (an older or equal sequence is a replay;
   operator rollbacks arrive as *new* manifests).
b. ``downloaded``: the archive into ``downloads/``, at most the signed size, whose SHA-256 must be
   the signed digest (skipped when ``bundles/<hex>/`` already exists and re-verifies).
c. ``unpacked``: safely, into ``bundles/.<hex>.tmp`` renamed to ``bundles/<hex>/``.
d. ``validated``: every file against ``manifest.json``, which must agree with the manifest; the
   spec re-checked with :func:`shared.spec.validate_spec_kv` and hashed.
e. ``health_checked``: the optional health check command on the candidate.
f. ``switched``: ``current`` re-pointed and the spec file replaced, each atomically.
g. ``activated``: the optional activation command succeeded (on failure the previous bundle is
   restored: ``failed`` with ``activation_failed``).
h. the state remembers the new bundle and the journal is removed.

Any refusal in a to e raises :class:`ActivationRefused` before anything under ``current`` changes.
Refusals *after* verification (b to e) still advance ``last_sequence`` so the same bad manifest is
not retried forever; refusals *in* verification (signature, key, expiry, environment, organization,
agent, replay, malformed payload) never touch the state, since such a manifest cannot be trusted to
name a sequence. A transient download failure is not a refusal: nothing is recorded and the same
manifest is tried again later.

After a crash, :meth:`Activator.recover` reads the journal: before ``switched`` the previous bundle
is still (or again) active and the outcome is ``failed``/``interrupted``; at ``switched`` the
previous bundle is restored the same way as in g; at ``activated`` step h is completed. Interrupted
manifests consume their sequence too: the control plane is told ``failed`` and a redeploy is a new
manifest. Every outcome is also written to ``deployment_outcome.json`` until it is reported, so a
restart never loses one.
"""

from __future__ import annotations

from agent.activation._activator import CRASH_EXIT_CODE, Activator
from agent.activation._fs import JOURNAL_FILE, OUTCOME_FILE
from agent.activation._model import (
    ACTIVATION_FAILED,
    INTERRUPTED,
    REFUSAL_REASONS,
    STATE_KEEPING_REASONS,
    STEPS,
    ActivationOutcome,
    ActivationRefused,
    Journal,
    Step,
)

__all__ = [
    "ACTIVATION_FAILED",
    "CRASH_EXIT_CODE",
    "INTERRUPTED",
    "JOURNAL_FILE",
    "OUTCOME_FILE",
    "REFUSAL_REASONS",
    "STATE_KEEPING_REASONS",
    "STEPS",
    "ActivationOutcome",
    "ActivationRefused",
    "Activator",
    "Journal",
    "Step",
]
