"""The hashes Jobmon keys rows by: identity hashes of workflows, templates and tasks, and token hashes."""

from __future__ import annotations

import hashlib


def sha256(*parts: str) -> str:
    """Parts joined by the unit separator (no part can contain it in a way that forges another split)."""
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def hash_token(token: str) -> str:
    """What the database keeps of a bearer token."""
    return hashlib.sha256(token.encode()).hexdigest()
