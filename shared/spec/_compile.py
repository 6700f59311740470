"""Compiling an authored plan: validate, then lower and hash when valid."""

from __future__ import annotations

from shared.spec._lower import lower_plan, spec_hash
from shared.spec._model import CompileResult
from shared.spec._validate import validate_plan

__all__ = ["compile_plan"]


def compile_plan(raw: object) -> CompileResult:
    """Validate an authored plan and, when it is valid, lower it to canonical spec.kv.

    Never raises, whatever ``raw`` is.

    Args:
        raw: The plan as decoded JSON.

    Returns:
        ``ok`` with ``spec_kv`` and ``spec_hash`` set when there is no error diagnostic (warnings
        are kept in ``diagnostics``); otherwise ``ok=False`` and both are ``None``.
    """
    plan, diagnostics = validate_plan(raw)
    if plan is None:
        return CompileResult(ok=False, spec_kv=None, spec_hash=None, diagnostics=diagnostics)
    text = lower_plan(plan)
    return CompileResult(ok=True, spec_kv=text, spec_hash=spec_hash(text), diagnostics=diagnostics)
