"""The one dead-letter record type, fed by every stage (decode, sinks, monitors).

A dead letter keeps the raw payload (or, above the cap, its prefix) + sha256 + size, the
Pub/Sub attributes, a stable code, the JSON path and a message, so an operator can fix the
producer and replay. No raw PII value is stored (``--dead_letter_payload``): by default
(``redacted``) the values of every feature any spec marks as PII are removed, whether the
payload parses or not (``PayloadRedactor``); ``hash`` keeps only sha256 + size; ``full``
keeps the raw bytes, PII included.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

import orjson

from schemas.specs import ModelSpec, PiiKey, name_key, pii_rules
from transforms.rows import PIPELINE_VERSION, from_micros, to_micros


class RawMessage(NamedTuple):
    """One input message, from Pub/Sub or a replayed file line."""

    data: bytes
    attributes: Mapping[str, str]
    message_id: str | None = None
    publish_time: dt.datetime | None = None


#: what a decode-stage dead letter keeps of the raw payload (``--dead_letter_payload``)
PAYLOAD_MODES = ("redacted", "hash", "full")
#: what stands in for a ``pii: drop`` value the byte scan found (a parsed document loses the key)
DROPPED = b'"pii:dropped"'
_KEY = re.compile(
    rb"""(?:"((?:[^"\\]|\\.){0,256}?)"|'((?:[^'\\]|\\.){0,256}?)'|\b([A-Za-z_][\w.-]{0,127}))\s*:\s*""",
    re.S,
)
_CLOSE = {ord("["): ord("]"), ord("{"): ord("}")}
_TOKEN_END = frozenset(b",}]\r\n")


class PayloadRedactor:
    """Removes the values of PII features from a rejected payload, parseable or not.

    The rules are those of EVERY spec (``pii_rules``): a rejected payload may name no model,
    the wrong one, or not parse at all. A payload that parses as JSON has every key any spec
    marks as PII redacted wherever it occurs (``drop`` removes it, ``hash`` stores the keyed
    HMAC, the same value as in an audit row). A payload that does not parse (NaN literals,
    invalid UTF-8, a truncated prefix, broken syntax) gets a tolerant byte scan: each
    ``"key": value`` (or ``'key'`` / bare ``key``) pair whose key is PII has its value, up to
    its end or to the end of the data, replaced. Keys match by ``name_key`` (case, surrounding
    space) after JSON escapes are decoded.

    >>> from schemas.specs import PiiKey, parse_spec
    >>> spec = parse_spec("name: m\\nfeatures: [{name: email, type: text, pii: hash},"
    ...                   " {name: ssn, type: text, pii: drop}]")
    >>> r = PayloadRedactor({"m": spec}, PiiKey(b"k" * 32))
    >>> out, found = r.redact(b'{"features": {"ssn": "123-45", "Email": "a@b.c", "x": NaN}')
    >>> out.startswith(b'{"features": {"ssn": "pii:dropped", "Email": "hmac-sha256:'), sorted(found)
    (True, ['123-45', 'a@b.c'])
    >>> r.redact(b'{"model": {"name": "m"}, "features": {"ssn": "1", "email": null}}')[0]
    b'{"model":{"name":"m"},"features":{"email":null}}'
    >>> r.redact(b'{"ssn": "123-4')[0]  # a truncated prefix: redacted to the end
    b'{"ssn": "pii:dropped"'
    """

    def __init__(self, specs: Mapping[str, ModelSpec], key: PiiKey | None) -> None:
        self.rules = pii_rules(specs)
        self._key = key

    def __bool__(self) -> bool:
        return bool(self.rules)

    def redact(self, data: bytes, parse: bool = True) -> tuple[bytes, list[str]]:
        """(payload without PII values, the raw values removed: to scrub messages with)."""
        if not self.rules:
            return data, []
        found: list[str] = []
        if parse:
            try:
                doc = orjson.loads(data)
            except orjson.JSONDecodeError:
                pass
            else:
                return orjson.dumps(self._doc(doc, found)), found
        return self._scan(data, found), found

    def _hash(self, value: Any) -> str:
        if self._key is None:  # only drop rules exist (a hash rule needs a key to load)
            return "pii:dropped"
        return self._key.hash(value)

    def _doc(self, node: Any, found: list[str]) -> Any:
        if isinstance(node, list):
            return [self._doc(v, found) for v in node]
        if not isinstance(node, dict):
            return node
        out = {}
        for k, v in node.items():
            rule = self.rules.get(name_key(k))
            if rule is None:
                out[k] = self._doc(v, found)
                continue
            if v is not None:
                found.append(v if isinstance(v, str) else orjson.dumps(v).decode())
            if rule == "hash":
                out[k] = None if v is None else self._hash(v)
        return out

    def _scan(self, data: bytes, found: list[str]) -> bytes:
        out, pos, n = bytearray(), 0, len(data)
        while (m := _KEY.search(data, pos)) is not None:
            raw_key = m.group(1) if m.group(1) is not None else m.group(2) or m.group(3)
            rule = self.rules.get(name_key(_unescape(raw_key)))
            if rule is None:
                out += data[pos : m.start() + 1]
                pos = m.start() + 1  # overlapping: a non-PII match must not swallow a PII key
                continue
            start = m.end()
            end = _value_end(data, start)
            if end == start:  # no value (``"email": ,``)
                out += data[pos:end]
                pos = max(end, m.start() + 1)
                continue
            value = data[start:end]
            if value.strip() not in (b"null", b""):
                found.append(_value_text(value))
            out += data[pos:start]
            if rule == "drop":
                out += DROPPED
            else:
                out += orjson.dumps(self._hash(_value_text(value)))
            pos = end
        out += data[pos:n]
        return bytes(out)


def _unescape(key: bytes) -> str:
    """A key's text with JSON escapes decoded (``em\\u0061il`` is ``email``); bytes that are
    not UTF-8 are replaced."""
    try:
        return orjson.loads(b'"' + key + b'"')
    except orjson.JSONDecodeError:
        return key.decode("utf-8", "replace")


def _value_end(data: bytes, i: int) -> int:
    """End of the JSON-ish value starting at ``i``: a quoted string, a bracketed value or a bare
    token (NaN, -Infinity, numbers, garbage bytes). Unterminated: the end of the data.

    >>> _value_end(b'"a\\\\"b", 1', 0), _value_end(b'[1, "]", [2]] x', 0), _value_end(b'NaN}', 0)
    (6, 13, 3)
    >>> _value_end(b'"open', 0), _value_end(b'{"a": [1, 2', 0)
    (5, 11)
    """
    n = len(data)
    if i >= n:
        return n
    c = data[i]
    if c in (34, 39):  # " or '
        j = i + 1
        while j < n:
            if data[j] == 92:  # backslash
                j += 2
                continue
            if data[j] == c:
                return j + 1
            j += 1
        return n
    if c in _CLOSE:
        depth, j, quote = 0, i, 0
        while j < n:
            b = data[j]
            if quote:
                if b == 92:
                    j += 1
                elif b == quote:
                    quote = 0
            elif b in (34, 39):
                quote = b
            elif b in _CLOSE:
                depth += 1
            elif b in (93, 125):
                depth -= 1
                if depth == 0:
                    return j + 1
            j += 1
        return n
    j = i
    while j < n and data[j] not in _TOKEN_END:
        j += 1
    while j > i and data[j - 1] in b" \t":
        j -= 1
    return j


def _value_text(value: bytes) -> str:
    """The text of a found value: a complete JSON string decoded (so its hash matches the audit
    row's), anything else as its bytes (invalid UTF-8 replaced)."""
    try:
        v = orjson.loads(value)
    except orjson.JSONDecodeError:
        if value[:1] in (b'"', b"'"):  # a string cut short, or with bytes that are not UTF-8
            value = value[1:-1] if len(value) > 1 and value[-1:] == value[:1] else value[1:]
        return value.decode("utf-8", "replace")
    return v if isinstance(v, str) else value.decode()


def scrub(text: str, values: list[str]) -> str:
    """``text`` without any of the PII ``values`` (error messages must not quote them).

    >>> scrub("bad value 'a@b.c' at $.x", ["a@b.c"])
    "bad value '<pii>' at $.x"
    """
    for v in sorted({v for v in values if len(v) >= 3}, key=len, reverse=True):
        text = text.replace(v, "<pii>")
    return text


def stored_payload(
    data: bytes, mode: str, redactor: PayloadRedactor | None, prefix_bytes: int, max_bytes: int
) -> tuple[bytes | None, list[str]]:
    """What a decode-stage dead letter stores of ``data`` (None: nothing), and the PII values
    found in it (in every mode: messages are scrubbed of them). Above ``max_bytes`` only the
    first ``prefix_bytes`` are kept (redacted by the byte scan).

    >>> stored_payload(b'{"x": 1}', "hash", None, 10, 100)
    (None, [])
    >>> stored_payload(b'0123456789abc', "full", None, 4, 8)
    (b'0123', [])
    """
    if mode not in PAYLOAD_MODES:
        raise ValueError(f"dead letter payload mode must be one of {PAYLOAD_MODES}, not {mode!r}")
    truncated = len(data) > max_bytes
    kept = data[:prefix_bytes] if truncated else data
    redacted, found = redactor.redact(kept, parse=not truncated) if redactor else (kept, [])
    if mode == "hash":
        return None, found
    return (kept if mode == "full" else redacted), found


def dead_letter(
    msg: RawMessage,
    *,
    stage: str,
    kind: str,
    code: str,
    path: str,
    message: str,
    ingest_time: dt.datetime,
    prefix_bytes: int,
    max_bytes: int,
    redactor: PayloadRedactor | None = None,
    payload_mode: str = "redacted",
    event_id: str | None = None,
    model: tuple[str | None, str | None] = (None, None),
) -> dict[str, Any]:
    """A ``dead_letters`` row. ``dead_letter_id`` is stable for the same stage, payload and message.

    ``redactor`` removes PII from the stored payload (``payload_mode`` ``redacted``); a PII
    value it found is removed from the message and path too.

    >>> now = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    >>> d = dead_letter(RawMessage(b"{x", {"a": "b"}), stage="decode", kind="prediction",
    ...                 code="invalid_json", path="$", message="bad", ingest_time=now,
    ...                 prefix_bytes=4096, max_bytes=262144)
    >>> d["payload_text"], d["payload_size"], d["payload_truncated"], d["attributes"]
    ('{x', 2, False, '{"a":"b"}')
    """
    data = msg.data
    digest = hashlib.sha256(data).hexdigest()
    truncated = len(data) > max_bytes
    stored, found = stored_payload(data, payload_mode, redactor, prefix_bytes, max_bytes)
    text: str | None = None
    b64: str | None = None
    if stored is not None:
        try:
            text = stored.decode("utf-8")
        except UnicodeDecodeError:
            b64 = base64.b64encode(stored).decode()
    return {
        # distinct messages with the same bytes stay distinct; a redelivery of one message
        # (same message_id) or an identical replayed line collapses
        "dead_letter_id": hashlib.sha256(
            f"{stage}\x00{code}\x00{digest}\x00{msg.message_id or ''}".encode()
        ).hexdigest(),
        "stage": stage,
        "kind": kind,
        "error_code": code,
        "error_path": scrub(path, found),
        "error_message": scrub(message, found)[:2000],
        "event_id": event_id,
        "model_name": model[0],
        "model_version": model[1],
        "payload_text": text,
        "payload_base64": b64,
        "payload_sha256": digest,
        "payload_size": len(data),
        "payload_truncated": truncated,
        "attributes": orjson.dumps(dict(msg.attributes or {})).decode(),
        "message_id": msg.message_id,
        "publish_time": to_micros(msg.publish_time),
        "ingest_time": to_micros(ingest_time),
        "pipeline_version": PIPELINE_VERSION,
    }


def row_dead_letter(
    table: str,
    row: Mapping[str, Any],
    *,
    stage: str,
    code: str,
    message: str,
    kind: str = "row",
    path: str | None = None,
) -> dict[str, Any]:
    """A dead letter for an audit row a sink refused or could not write (the row is the payload).

    The row already has its PII rules applied, so the payload needs no further redaction.
    """
    payload = orjson.dumps(dict(row), default=str, option=orjson.OPT_NON_STR_KEYS)
    return dead_letter(
        RawMessage(payload, {"table": table}, row.get("message_id"), _maybe_dt(row.get("publish_time"))),
        stage=stage,
        kind=kind,
        code=code,
        path=path or f"$.{table}",
        message=message,
        # tables without an ingest_time (monitor output): the diversion time is the ingest stamp
        ingest_time=_maybe_dt(row.get("ingest_time")) or dt.datetime.now(dt.timezone.utc),
        prefix_bytes=len(payload),
        max_bytes=len(payload),
        event_id=row.get("event_id"),
        model=(row.get("model_name"), row.get("model_version")),
    )


#: the dead-letter ``kind`` of a later copy, per audit table
_KIND = {"predictions": "prediction", "labels": "label"}


def conflict_dead_letter(table: str, row: Mapping[str, Any], first: str) -> dict[str, Any]:
    """A ``conflicting_duplicate`` dead letter: ``row`` has the identity of an audit row already
    kept (the first copy, described by ``first``) but different canonical content.

    The later copy itself is the payload (the evidence; PII rules already applied, as on every
    audit row). Its id depends on the copy's original payload and message id only, not on
    when it was processed, so replaying the same file twice stores one dead letter per copy.

    >>> row = {"event_id": "evt-00000001", "model_name": "fraud", "model_version": "1",
    ...        "payload_sha256": "ab" * 32, "ingest_time": 0, "prediction_score": 0.2}
    >>> d = conflict_dead_letter("predictions", row, "content sha256 " + "cd" * 32)
    >>> d["stage"], d["kind"], d["error_code"], d["model_name"], d["event_id"]
    ('dedup', 'prediction', 'conflicting_duplicate', 'fraud', 'evt-00000001')
    >>> d["dead_letter_id"] == conflict_dead_letter("predictions", {**row, "ingest_time": 9}, "x")["dead_letter_id"]
    True
    """
    model, event_id = row.get("model_name"), row.get("event_id")
    who = f"({model}, {event_id})" if table == "predictions" else f"label for {event_id}"
    dead = row_dead_letter(
        table,
        row,
        stage="dedup",
        code="conflicting_duplicate",
        kind=_KIND.get(table, "row"),
        path="$",
        message=(
            f"{table}: a later copy of {who} with different content than the audit row "
            f"(the first copy: {first}); this copy is not audited, it is kept here as evidence. "
            "Fix the producer: one event_id per prediction and model, re-sent only unchanged"
        ),
    )
    dead["dead_letter_id"] = hashlib.sha256(
        f"dedup\x00conflicting_duplicate\x00{row.get('payload_sha256') or dead['payload_sha256']}"
        f"\x00{row.get('message_id') or ''}".encode()
    ).hexdigest()
    return dead


def _maybe_dt(us: int | None) -> dt.datetime | None:
    return None if us is None else from_micros(us)
