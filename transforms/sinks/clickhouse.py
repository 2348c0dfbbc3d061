"""ClickHouse sink through clickhouse-connect: ``http(s)://`` servers or embedded ``chdb:///path``.

Errors are classified by clickhouse-connect's exception types and the ClickHouse server
error code, which both backends expose as ``Error.code`` (HTTP: the
``X-ClickHouse-Exception-Code`` header; chDB: parsed from the engine's ``Code: N.``).
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import ssl
import types
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from schemas.tables import TABLES
from transforms.identity import row_identity
from transforms.secrets import SecretError, SecretRef
from transforms.sinks.base import Mode, SinkFn
from transforms.sinks.errors import ROW_REFUSAL, SINK_FAILURE, TRANSIENT, Verdict
from transforms.sinks.retry import RetriesExhausted, RetryPolicy

# server error codes (ClickHouse src/Common/ErrorCodes.cpp; names checked with errorCodeToName)
SINK_CODES: dict[int, tuple[str, str]] = {  # code -> (server name, our code)
    81: ("UNKNOWN_DATABASE", "unknown_database"),
    60: ("UNKNOWN_TABLE", "unknown_table"),
    16: ("NO_SUCH_COLUMN_IN_TABLE", "missing_column"),
    8: ("THERE_IS_NO_COLUMN", "missing_column"),
    10: ("NOT_FOUND_COLUMN_IN_BLOCK", "missing_column"),
    47: ("UNKNOWN_IDENTIFIER", "missing_column"),
    516: ("AUTHENTICATION_FAILED", "auth_failed"),
    192: ("UNKNOWN_USER", "auth_failed"),
    193: ("WRONG_PASSWORD", "auth_failed"),
    194: ("REQUIRED_PASSWORD", "auth_failed"),
    195: ("IP_ADDRESS_NOT_ALLOWED", "auth_failed"),
    497: ("ACCESS_DENIED", "access_denied"),
    291: ("DATABASE_ACCESS_DENIED", "access_denied"),
    164: ("READONLY", "access_denied"),
}
TRANSIENT_CODES: dict[int, str] = {  # code -> server name
    3: "UNEXPECTED_END_OF_FILE",
    74: "CANNOT_READ_FROM_FILE_DESCRIPTOR",
    75: "CANNOT_WRITE_TO_FILE_DESCRIPTOR",
    76: "CANNOT_OPEN_FILE",  # a locked/busy store
    159: "TIMEOUT_EXCEEDED",
    202: "TOO_MANY_SIMULTANEOUS_QUERIES",
    203: "NO_FREE_CONNECTION",
    209: "SOCKET_TIMEOUT",
    210: "NETWORK_ERROR",
    225: "NO_ZOOKEEPER",
    236: "ABORTED",
    241: "MEMORY_LIMIT_EXCEEDED",
    242: "TABLE_IS_READ_ONLY",  # replica lost its keeper session
    243: "NOT_ENOUGH_SPACE",
    252: "TOO_MANY_PARTS",  # merges catch up
    279: "ALL_CONNECTION_TRIES_FAILED",
    285: "TOO_FEW_LIVE_REPLICAS",
    286: "UNSATISFIED_QUORUM_FOR_PREVIOUS_WRITE",
    319: "UNKNOWN_STATUS_OF_INSERT",
    394: "QUERY_WAS_CANCELLED",
    425: "SYSTEM_ERROR",
    439: "CANNOT_SCHEDULE_TASK",
    473: "DEADLOCK_AVOIDED",
    999: "KEEPER_EXCEPTION",
}
ROW_CODES: dict[int, str] = {  # code -> server name
    6: "CANNOT_PARSE_TEXT",
    26: "CANNOT_PARSE_QUOTED_STRING",
    27: "CANNOT_PARSE_INPUT_ASSERTION_FAILED",
    38: "CANNOT_PARSE_DATE",
    41: "CANNOT_PARSE_DATETIME",
    53: "TYPE_MISMATCH",
    69: "ARGUMENT_OUT_OF_BOUND",
    70: "CANNOT_CONVERT_TYPE",
    72: "CANNOT_PARSE_NUMBER",
    117: "INCORRECT_DATA",
    128: "TOO_LARGE_ARRAY_SIZE",
    131: "TOO_LARGE_STRING_SIZE",
    321: "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE",
    349: "CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN",
    395: "FUNCTION_THROW_IF_VALUE_IS_NON_ZERO",  # a table's CHECK via throwIf
    469: "VIOLATED_CONSTRAINT",  # a table CONSTRAINT refuses the row
}


def dedup_token(table: str, rows: Sequence[dict[str, Any]]) -> str:
    """Deterministic ``insert_deduplication_token``: the same batch retried is written once.

    Predictions are keyed by their identity (model name, event_id): two models sharing an
    event_id are two different rows, so their batches get different tokens.

    >>> dedup_token("predictions", [{"event_id": "a", "model_name": "m"}]) == dedup_token(
    ...     "predictions", [{"event_id": "a", "model_name": "m"}])
    True
    >>> dedup_token("predictions", [{"event_id": "a", "model_name": "fraud"}]) == dedup_token(
    ...     "predictions", [{"event_id": "a", "model_name": "churn"}])
    False
    """
    key = TABLES[table].key
    h = hashlib.sha256(table.encode())
    for row in rows:
        part = row_identity(row) if table == "predictions" else str(row[key])
        h.update(b"\x00" + part.encode())
    return h.hexdigest()


def redact_dsn(dsn: str) -> str:
    """A DSN safe to print: no password (userinfo or query parameter).

    >>> redact_dsn("https://audit:s3cret@ch.example:8443/?password=x&secure=1")
    'https://audit@ch.example:8443/?secure=1'
    >>> redact_dsn("chdb:///var/lib/predaudit")
    'chdb:///var/lib/predaudit'
    """
    parts = urlsplit(dsn)
    netloc = parts.netloc
    if "@" not in netloc and "password" not in parts.query.lower():
        return dsn
    if "@" in netloc:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.split(':', 1)[0]}@{host}"
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k.lower() != "password"])
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and its causes; urllib3's MaxRetryError keeps the real error in ``.reason``."""
    out: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in out:
        out.append(cur)
        reason = getattr(cur, "reason", None)
        cur = cur.__cause__ or cur.__context__ or (reason if isinstance(reason, BaseException) else None)
    return out


def is_tls_error(exc: BaseException) -> bool:
    """A TLS failure anywhere in the chain (ssl, urllib3 and requests wrap ``ssl.SSLError``)."""
    import urllib3.exceptions

    return any(isinstance(e, ssl.SSLError | urllib3.exceptions.SSLError) for e in _chain(exc))


def _raised_in(exc: BaseException, module_prefix: str) -> bool:
    """Whether the innermost frame of ``exc``'s traceback belongs to ``module_prefix``."""
    tb: types.TracebackType | None = exc.__traceback__
    last = None
    while tb is not None:
        last, tb = tb, tb.tb_next
    return last is not None and str(last.tb_frame.f_globals.get("__name__", "")).startswith(module_prefix)


def classify_clickhouse(exc: BaseException, database: str, table: str, dsn: str) -> Verdict:
    """The failure class of an exception raised by a clickhouse-connect insert."""
    from clickhouse_connect.driver import exceptions as chx

    where, shown = f"{database}.{table}", redact_dsn(dsn)
    provision = (
        f"run `predaudit provision --sinks clickhouse --clickhouse_dsn {shown} "
        f"--clickhouse_database {database} --pubsub off` (or replay without --no_create_tables)"
    )
    fixes = {
        "unknown_database": provision,
        "unknown_table": provision,
        "missing_column": f"the table {where} lacks expected columns: {provision}",
        "auth_failed": f"check the user and password of --clickhouse_dsn {shown}",
        "access_denied": f"grant INSERT on {database}.* to the user of --clickhouse_dsn {shown}",
    }
    if is_tls_error(exc):
        return Verdict(
            SINK_FAILURE,
            "tls",
            f"TLS failure: {type(exc).__name__}: {exc}",
            f"check the server certificate / CA for {shown}",
        )
    code = getattr(exc, "code", None) if isinstance(exc, chx.Error) else None
    if isinstance(code, int):
        name = getattr(exc, "name", None) or f"code {code}"
        reason = f"{name}: {str(exc).splitlines()[0][:300]}"
        if code in SINK_CODES:
            ours = SINK_CODES[code][1]
            return Verdict(SINK_FAILURE, ours, reason, fixes[ours])
        if code in TRANSIENT_CODES:
            return Verdict(TRANSIENT, "server_busy", reason)
        if code in ROW_CODES:
            return Verdict(ROW_REFUSAL, "refused_by_server", reason)
        # an unknown server code: loud (never turn rows into dead letters on a guess)
        return Verdict(SINK_FAILURE, "server_error", reason, f"see the ClickHouse server log (error {name})")
    if isinstance(exc, chx.DataError):  # the client could not encode a value for its column type
        return Verdict(ROW_REFUSAL, "unencodable_value", f"{type(exc).__name__}: {exc}")
    if isinstance(exc, chx.ProgrammingError):  # e.g. "Unrecognized column": the table's shape differs
        return Verdict(
            SINK_FAILURE, "missing_column", f"{type(exc).__name__}: {exc}", fixes["missing_column"]
        )
    if isinstance(exc, chx.OperationalError | ConnectionError | TimeoutError):  # transport
        return Verdict(TRANSIENT, "unreachable", f"{type(exc).__name__}: {exc}")
    if isinstance(exc, ValueError | TypeError | OverflowError) and _raised_in(
        exc, "clickhouse_connect.datatypes"
    ):  # a value the column type's serializer cannot take (e.g. a string for a Float64)
        return Verdict(ROW_REFUSAL, "unencodable_value", f"{type(exc).__name__}: {exc}")
    return Verdict(
        SINK_FAILURE,
        "unexpected_error",
        f"{type(exc).__name__}: {exc}",
        f"unexpected error writing {where}; see the log",
    )


_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1", "ip6-localhost"})
_warned_plain: set[str] = set()
_log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine (plain HTTP cannot be sniffed off the wire there).

    A name that merely starts with ``127.`` (``127.evil.example``) is another machine.

    >>> is_loopback("127.0.0.1"), is_loopback("localhost"), is_loopback("ch.example.com")
    (True, True, False)
    >>> is_loopback("127.0.0.2"), is_loopback("[::1]"), is_loopback("127.evil.example")
    (True, True, False)
    """
    host = host.strip("[]").lower()
    if host in _LOOPBACK:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name, not an address
        return False


def warn_plain_http(dsn: str) -> bool:
    """One warning line per host and process when ``dsn`` is plain ``http://`` to another
    machine: the user and password would cross the network unencrypted. True if it warned.
    """
    parts = urlsplit(dsn)
    host = parts.hostname or ""
    if parts.scheme != "http" or is_loopback(host) or host in _warned_plain:
        return False
    _warned_plain.add(host)
    _log.warning(
        "clickhouse: %s is plain HTTP to a non-loopback host: the password crosses the network "
        "unencrypted; use https://",
        redact_dsn(dsn),
    )
    return True


def clickhouse_client(dsn: str, password: str | None = None) -> Any:
    """A clickhouse-connect client where ``https://`` means TLS on every port.

    clickhouse-connect takes TLS from the port (443/8443) or ``secure``, not from the scheme:
    an ``https://`` DSN on another port would otherwise send ``Authorization: Basic`` over
    plain HTTP. ``password`` (from a secret) overrides the DSN's. Plain ``http://`` to a
    non-loopback host warns once (:func:`warn_plain_http`).
    """
    import clickhouse_connect

    warn_plain_http(dsn)
    kw: dict[str, Any] = {"interface": "https"} if dsn.startswith("https://") else {}
    if password is not None:
        kw["password"] = password
    return clickhouse_connect.get_client(dsn=dsn, **kw)


class ClickHouseSinkFn(SinkFn):
    name = "clickhouse"

    def __init__(
        self,
        dsn: str,
        database: str,
        policy: RetryPolicy | None = None,
        mode: Mode = "replay",
        password_secret: str = "",
    ) -> None:
        super().__init__(policy or RetryPolicy(), mode=mode)
        self.dsn, self.database = dsn, database
        # the reference travels in the graph; the password is read on the worker (make_client)
        self.password_secret = password_secret

    def client_key(self) -> tuple:
        return (self.dsn, self.password_secret)

    def make_client(self):
        password = SecretRef(self.password_secret).text() if self.password_secret else None
        return clickhouse_client(self.dsn, password)

    def connect_fix(self) -> str:
        return (
            f"check --clickhouse_dsn {redact_dsn(self.dsn)} (an embedded chdb:// directory is locked "
            "while another process has it open)"
        )

    def where(self, table: str) -> str:
        return f"{self.database}.{table}"

    def insert(self, table: str, rows: Sequence[dict[str, Any]]) -> list[tuple[int, str]]:
        cols = TABLES[table].column_names
        self.client.insert(
            f"`{self.database}`.`{table}`",
            [[row.get(c) for row in rows] for c in cols],
            column_names=cols,
            column_oriented=True,
            settings={"insert_deduplication_token": dedup_token(table, rows)},
        )
        return []

    def classify(self, exc: BaseException) -> Verdict:
        if isinstance(exc, SecretError):  # --clickhouse_password_secret cannot be read
            return Verdict(
                SINK_FAILURE, exc.code, f"cannot read the password: {exc.code}: {exc.ref}", exc.fix
            )
        return classify_clickhouse(exc, self.database, self.table, self.dsn)

    def exhausted(self, exc: RetriesExhausted) -> Verdict:
        return Verdict(
            SINK_FAILURE,
            "unreachable",
            str(exc),
            f"check that ClickHouse at {redact_dsn(self.dsn)} is up and reachable",
        )
