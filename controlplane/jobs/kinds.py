"""Names of job kinds that one domain enqueues and another handles.

A domain may ask for work another domain does without importing it: it enqueues the kind named
here, and the handling domain registers the handler (see ``controlplane.app.job_handlers``).
"""

from __future__ import annotations

__all__ = ["RECONCILE_ENVIRONMENT"]

#: An environment's agents changed (one was deleted): re-evaluate its in-flight deployments.
#: Payload: ``{"environment_id": ...}``.
RECONCILE_ENVIRONMENT = "delivery.reconcile_environment"
