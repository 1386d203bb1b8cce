"""Per-model redaction and retention policy (a model manifest's ``audit`` section)."""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any, Literal

from risklens.errors import ManifestError
from risklens.rationale import WITHHELD
from risklens.v1 import risklens_pb2

from ._canonical import canonical_message, sha256_hex

Action = Literal["raw", "hmac", "drop"]
ACTIONS: tuple[str, ...] = ("raw", "hmac", "drop")
HMAC_KEY_ENV = "RISKLENS_AUDIT_HMAC_KEY"
HMAC_PREFIX = "hmac-sha256:"


@dataclass(frozen=True)
class RedactionPolicy:
    """What the audit trail keeps of each input field, and for how long.

    ``fields`` maps a feature name to ``raw`` (stored as given), ``hmac`` (stored as a keyed
    HMAC-SHA256, so equal values stay linkable without being readable) or ``drop`` (not stored;
    the name is listed in ``dropped_fields``). ``default`` applies to every other field.
    ``retention_days`` (None: keep forever) sets when ``purge`` may remove a record's body.
    """

    fields: Mapping[str, Action] = field(default_factory=lambda: MappingProxyType({}))
    default: Action = "raw"
    retention_days: int | None = None
    hmac_key: bytes | None = field(default=None, repr=False)

    @classmethod
    def from_manifest(cls, audit_section: Mapping[str, Any] | None, *,
                      hmac_key: bytes | str | None = None) -> RedactionPolicy:
        """Build from a manifest's ``audit`` dict (None: store everything raw, keep forever).

        The HMAC key comes from ``hmac_key`` or the ``RISKLENS_AUDIT_HMAC_KEY`` environment
        variable; a policy that hashes or drops fields without a key is refused here, at model
        load, rather than failing every request later.
        """
        section = dict(audit_section or {})
        unknown = set(section) - {"fields", "default", "retention_days"}
        if unknown:
            raise ManifestError(f"audit policy has unknown keys {sorted(unknown)}; expected "
                                f"fields, default, retention_days", field="audit")
        fields = dict(section.get("fields") or {})
        default = section.get("default", "raw")
        for name, action in [*fields.items(), ("default", default)]:
            if action not in ACTIONS:
                raise ManifestError(f"audit policy for {name!r} is {action!r}; expected one of "
                                    f"{', '.join(ACTIONS)}", field=f"audit.fields.{name}")
        retention = section.get("retention_days")
        if retention is not None and (isinstance(retention, bool) or not isinstance(retention, int)
                                      or retention < 1):
            raise ManifestError(f"audit retention_days must be a positive integer, got {retention!r}",
                                field="audit.retention_days")
        key = hmac_key if hmac_key is not None else os.environ.get(HMAC_KEY_ENV)
        key_bytes = key.encode("utf-8") if isinstance(key, str) else key
        policy = cls(fields=MappingProxyType(fields), default=default, retention_days=retention,
                     hmac_key=key_bytes or None)
        if not policy.is_raw and not policy.hmac_key:
            raise ManifestError(f"the audit policy hashes or drops fields but {HMAC_KEY_ENV} is not set (it keys "
                                f"the stored hashes, the whole input's included)", field="audit")
        return policy

    @property
    def key_fingerprint(self) -> str:
        """Names the HMAC key without revealing it ("" when the policy keeps every field raw): two
        runs whose fingerprints differ would store the same value (and input) as different hashes."""
        if self.is_raw or not self.hmac_key:
            return ""
        return hashlib.sha256(b"risklens-audit-hmac-key:" + self.hmac_key).hexdigest()[:16]

    def action(self, feature: str) -> Action:
        return self.fields.get(feature, self.default)

    def withheld(self, features: Iterable[str]) -> frozenset[str]:
        """The features among ``features`` whose values the trail hashes or drops."""
        return frozenset(name for name in features if self.action(name) != "raw")

    @property
    def is_raw(self) -> bool:
        """Every field is stored as given."""
        return self.default == "raw" and all(action == "raw" for action in self.fields.values())

    def keyed_hash_text(self, canonical_value: bytes) -> str:
        """The stored text of a hashed field: HMAC-SHA256 over the value's canonical form."""
        if not self.hmac_key:
            raise ManifestError(f"the audit policy hashes or drops fields but {HMAC_KEY_ENV} is not set",
                                field="audit")
        return keyed_digest(self.hmac_key, canonical_value)

    def input_digest(self, canonical_input: bytes) -> str:
        """A record's ``input_sha256``: the canonical input's SHA-256, keyed (HMAC, ``hmac-sha256:``)
        when the policy hashes or drops a field. Left plain, it would let anyone who reads the record
        try the few values a withheld field can take (an age, a category) until the hash matches."""
        return sha256_hex(canonical_input) if self.is_raw else self.keyed_hash_text(canonical_input)

    def keyed_hash(self, value: risklens_pb2.Value) -> risklens_pb2.Value:
        return risklens_pb2.Value(text=self.keyed_hash_text(canonical_message(value)))

    def redact_input(self, values: Mapping[str, risklens_pb2.Value]
                     ) -> tuple[dict[str, risklens_pb2.Value], list[str]]:
        """The input as stored, and the sorted names of the dropped fields."""
        stored: dict[str, risklens_pb2.Value] = {}
        dropped: list[str] = []
        for name, value in values.items():
            action = self.action(name)
            if action == "raw":
                stored[name] = value
            elif action == "hmac":
                stored[name] = self.keyed_hash(value)
            else:
                dropped.append(name)
        return stored, sorted(dropped)

    def redact_explanation(self, explanation: risklens_pb2.ExplainResponse) -> risklens_pb2.ExplainResponse:
        """A copy whose echoed claim values follow the policy (the caller's copy is untouched).

        Contributions and ICE curves repeat the claim's own value of a feature, and LIME conditions
        name it or its range; a policy that hashes or drops the field must apply there too, or the
        redaction would be cosmetic. (Reason texts and the rationale are re-rendered by the core,
        which has the catalogue: ``ExplainService.withheld_texts``.)
        """
        if self.is_raw:
            return explanation
        stored = risklens_pb2.ExplainResponse()
        stored.CopyFrom(explanation)
        self.redact_holders(stored.contributions)
        self.redact_holders(stored.ice.features)
        self.redact_conditions(stored.lime.weights)
        return stored

    def redact_holders(self, holders: Iterable[Any]) -> None:
        """Apply the policy, in place, to messages that echo a feature's value (``feature``, ``value``).
        An ICE curve's claim-specific parts go with it: ``position_percentile`` reads the value back
        to within a percentile, and the curve itself passes through the claim's score at the claim's
        value (a category's or a grid point's). Its grid, partial dependence and slope stay."""
        for holder in holders:
            action = self.action(holder.feature)
            if action == "hmac" and holder.HasField("value"):
                holder.value.CopyFrom(self.keyed_hash(holder.value))
            elif action == "drop":
                holder.ClearField("value")
            if action != "raw" and "position_percentile" in holder.DESCRIPTOR.fields_by_name:
                holder.ClearField("position_percentile")
                holder.ClearField("ice")

    def redact_conditions(self, weights: Iterable[Any]) -> None:
        """LIME conditions of hashed or dropped features, in place: a categorical one names the
        claim's own value, a numeric one the range it is in."""
        for weight in weights:
            if self.action(weight.feature) != "raw":
                weight.condition = WITHHELD

    def retain_until(self, created_at: datetime) -> datetime | None:
        return None if self.retention_days is None else created_at + timedelta(days=self.retention_days)


RAW_POLICY = RedactionPolicy()


def keyed_digest(key: bytes, data: bytes) -> str:
    """``hmac-sha256:`` and the hex HMAC-SHA256 of ``data`` under ``key``."""
    return HMAC_PREFIX + hmac.new(key, data, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class AuditEntry:
    """One explanation to record: exactly what was returned to the caller, and the claim behind it.

    ``explanation``: the core's ``risklens.core.Explanation`` (its response message is what the
    caller receives), or that ``ExplainResponse`` message itself.
    """

    receipt_id: str
    created_at: datetime
    model: risklens_pb2.ModelRef
    input: Mapping[str, Any]
    explanation: Any  # risklens.core.Explanation | risklens_pb2.ExplainResponse
    policy: RedactionPolicy = RAW_POLICY
