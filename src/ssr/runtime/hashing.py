"""Stable content hashes: the keys of every cache and fingerprint."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def content_hash(*parts: Any) -> str:
    """Stable short hash of JSON-serialisable parts (cache keys, fingerprints)."""
    payload = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:24]
