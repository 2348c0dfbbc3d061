"""Secrets reach the workers by reference and are resolved there; ClickHouse transport safety.

Secret Manager is replaced by an injected client with the real client's call shape
(``access_secret_version(request={"name": ...})`` -> ``.payload.data``) and its real
google.api_core errors; file secrets use real files. The TLS checks use a raw loopback socket
that records the first bytes a client sends.
"""

from __future__ import annotations

import base64
import logging
import pickle
import socket
import subprocess
import sys
import threading
import types
from collections.abc import Iterator

import orjson
import pytest

from schemas.specs import PII_KEY_SECRET_ENV, PiiKey
from transforms import secrets
from transforms.secrets import ACCESSOR_ROLE, SecretError, SecretRef, resolve
from transforms.sinks import clickhouse as ch
from transforms.sinks.clickhouse import ClickHouseSinkFn, clickhouse_client, warn_plain_http
from transforms.sinks.retry import RetryPolicy

VALUE = b"pii-key-0123456789-abcdef"
REF = "projects/audit-prj/secrets/pii-key/versions/3"


class FakeSecretManager:
    """Answers ``access_secret_version`` like google-cloud-secret-manager; counts the calls."""

    def __init__(self, values: dict[str, bytes], errors: dict[str, Exception] | None = None) -> None:
        self.values, self.errors, self.calls = values, errors or {}, []

    def access_secret_version(self, request: dict):
        name = request["name"]
        self.calls.append(name)
        if name in self.errors:
            raise self.errors[name]
        return types.SimpleNamespace(name=name, payload=types.SimpleNamespace(data=self.values[name]))


@pytest.fixture()
def fake_sm() -> Iterator[FakeSecretManager]:
    fake = FakeSecretManager({REF: VALUE})
    made: list[int] = []

    def factory() -> FakeSecretManager:
        made.append(1)
        return fake

    secrets.set_client_factory(factory)
    yield fake
    secrets.set_client_factory(None)


def test_secret_manager_reference_is_resolved_once_per_process(fake_sm) -> None:
    assert resolve(REF) == VALUE
    assert SecretRef(REF).value() == VALUE
    assert fake_sm.calls == [REF]  # cached: a worker asks once


def test_a_secret_ref_pickles_as_the_reference_and_resolves_only_when_used(fake_sm) -> None:
    ref = SecretRef(REF)
    blob = pickle.dumps(ref)
    assert fake_sm.calls == []  # nothing is read at graph construction
    assert REF.encode() in blob and VALUE not in blob
    assert pickle.loads(blob).value() == VALUE
    assert VALUE not in pickle.dumps(ref) and repr(ref) == f"SecretRef({REF!r})"


def test_secret_manager_errors_are_one_line_with_the_fix_and_never_the_value(fake_sm, caplog) -> None:
    from google.api_core import exceptions as gexc

    caplog.set_level(logging.DEBUG)
    denied, gone = REF.replace("/3", "/4"), REF.replace("/3", "/5")
    fake_sm.errors = {denied: gexc.PermissionDenied("no"), gone: gexc.NotFound("no such version")}
    with pytest.raises(SecretError) as info:
        resolve(denied)
    assert info.value.code == "secret_access_denied"
    assert ACCESSOR_ROLE in info.value.fix and "\n" not in str(info.value)
    with pytest.raises(SecretError) as info:
        resolve(gone)
    assert info.value.code == "secret_not_found" and "gcloud secrets versions add" in info.value.fix
    resolve(REF)
    assert VALUE.decode() not in caplog.text


@pytest.mark.parametrize(
    "ref", ["projects/p/secrets/s", "projects/p/secrets/s/versions/", "projects/p/secrets/s/versions/x"]
)
def test_a_reference_without_a_version_is_refused_before_any_call(fake_sm, ref) -> None:
    with pytest.raises(SecretError) as info:
        resolve(ref)
    assert info.value.code == "bad_secret_ref" and fake_sm.calls == []


def test_file_secrets_strip_the_newline_and_name_the_problem(tmp_path) -> None:
    f = tmp_path / "pw"
    f.write_bytes(b"s3cret-pw\n")
    assert resolve(str(f)) == b"s3cret-pw"
    assert resolve(f"file://{f}") == b"s3cret-pw"
    with pytest.raises(SecretError) as info:
        resolve(str(tmp_path / "nope"))
    assert info.value.code == "secret_file_missing" and str(tmp_path / "nope") in str(info.value)
    (tmp_path / "empty").write_bytes(b"\n")
    with pytest.raises(SecretError) as info:
        resolve(str(tmp_path / "empty"))
    assert info.value.code == "secret_empty"


def test_pii_key_from_a_secret_reference_or_its_environment_variable(fake_sm, tmp_path) -> None:
    direct = PiiKey(VALUE).hash("alice@example.com")
    assert PiiKey.from_env({}, secret=REF).hash("alice@example.com") == direct
    assert PiiKey.from_env({PII_KEY_SECRET_ENV: REF}).hash("alice@example.com") == direct
    # an explicit reference wins over a key in the environment
    assert PiiKey.from_env({"PREDAUDIT_PII_KEY": "x" * 20}, secret=REF).hash("a") == PiiKey(VALUE).hash("a")
    short = tmp_path / "short"
    short.write_bytes(b"tiny")
    with pytest.raises(SecretError) as info:
        PiiKey.from_env({}, secret=str(short))
    assert info.value.code == "pii_key_too_short" and "tiny" not in str(info.value)


def test_a_secret_is_resolved_on_the_worker_not_on_the_launcher(tmp_path) -> None:
    """A pickled sink carries the reference; another process (a worker) reads the file."""
    f = tmp_path / "ch-password"
    f.write_text("worker-only-pw\n")
    fn = ClickHouseSinkFn("http://audit@127.0.0.1:1", "audit", password_secret=str(f))
    blob = pickle.dumps(fn)
    assert b"worker-only-pw" not in blob
    code = (
        "import pickle, sys; fn = pickle.loads(sys.stdin.buffer.read()); "
        "from transforms.secrets import SecretRef; print(SecretRef(fn.password_secret).text())"
    )
    out = subprocess.run([sys.executable, "-c", code], input=blob, capture_output=True, check=True)
    assert out.stdout.decode().strip() == "worker-only-pw"


# -- ClickHouse transport -----------------------------------------------------------------------
class FirstBytes:
    """A TCP listener that records the first bytes of each connection and closes it unanswered
    (a client that retries gets the same until it gives up)."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.sock = socket.create_server((host, 0))
        self.port = self.sock.getsockname()[1]
        self.seen: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed by wait()
                return
            with conn:
                conn.settimeout(5)
                try:
                    self.seen.append(conn.recv(65536))
                except OSError:
                    self.seen.append(b"")

    def wait(self) -> bytes:
        """The first bytes of the first connection; stops listening."""
        self.sock.close()
        self.thread.join(10)
        return self.seen[0] if self.seen else b""


def _connect(dsn: str, **kw) -> BaseException | None:
    try:
        clickhouse_client(dsn, **kw)
    except Exception as exc:  # noqa: BLE001 -- the listener is not a ClickHouse server
        return exc
    return None


def test_https_means_tls_on_a_non_standard_port_and_no_basic_auth_in_clear() -> None:
    srv = FirstBytes()
    _connect(f"https://audit:Pw-In-Dsn@127.0.0.1:{srv.port}")
    first = srv.wait()
    assert first[:2] == b"\x16\x03", first[:40]  # a TLS ClientHello, not "POST / HTTP/1.1"
    assert b"Authorization" not in first and b"Pw-In-Dsn" not in first


def test_the_sink_client_uses_tls_for_https_and_the_password_from_the_secret(tmp_path) -> None:
    f = tmp_path / "pw"
    f.write_text("from-the-secret\n")
    srv = FirstBytes()
    fn = ClickHouseSinkFn(f"https://audit@127.0.0.1:{srv.port}", "audit", password_secret=str(f))
    with pytest.raises(Exception):  # noqa: B017 -- not a TLS server: the handshake fails
        fn.make_client()
    assert srv.wait()[:2] == b"\x16\x03"
    # over plain http on loopback the Basic credentials show the secret's password was used
    srv = FirstBytes()
    fn = ClickHouseSinkFn(f"http://audit@127.0.0.1:{srv.port}", "audit", password_secret=str(f))
    with pytest.raises(Exception):  # noqa: B017 -- the listener closes without an answer
        fn.make_client()
    assert b"Basic " + base64.b64encode(b"audit:from-the-secret") in srv.wait()


def test_plain_http_to_another_host_warns_once_without_the_password(caplog, monkeypatch) -> None:
    monkeypatch.setattr(ch, "_warned_plain", set())
    caplog.set_level(logging.WARNING, logger="transforms.sinks.clickhouse")
    srv = FirstBytes("0.0.0.0")
    ip = socket.gethostbyname(socket.gethostname())
    host = (
        ip if not ip.startswith("127.") else subprocess.check_output(["hostname", "-I"]).split()[0].decode()
    )
    _connect(f"http://audit:Pw-Hidden@{host}:{srv.port}")
    srv.wait()
    assert warn_plain_http(f"http://audit:Pw-Hidden@{host}:{srv.port}") is False  # once per host
    lines = [r.getMessage() for r in caplog.records if r.name == "transforms.sinks.clickhouse"]
    assert len(lines) == 1 and host in lines[0] and "Pw-Hidden" not in lines[0]
    assert "https://" in lines[0]


@pytest.mark.parametrize(
    "dsn",
    ["http://u:p@127.0.0.1:8123", "http://u:p@localhost:8123", "https://u:p@ch.example:9440", "chdb:///x"],
)
def test_loopback_http_tls_and_embedded_do_not_warn(dsn, monkeypatch) -> None:
    monkeypatch.setattr(ch, "_warned_plain", set())
    assert warn_plain_http(dsn) is False


def test_an_unreadable_password_secret_stops_replay_as_a_sink_failure(tmp_path) -> None:
    from tests.unit.test_sinks import drive, pred_row
    from transforms.sinks.errors import find_sink_failure

    missing = str(tmp_path / "no-such-file")
    fn = ClickHouseSinkFn(
        "http://audit@127.0.0.1:1",
        "audit",
        RetryPolicy(attempts=1, base_delay_s=0.0),
        password_secret=missing,
    ).for_table("predictions", 10)
    with pytest.raises(Exception) as info:
        drive(fn, [pred_row(0)])
    failure = find_sink_failure(info.value)
    assert failure is not None and failure.code == "secret_file_missing"
    assert missing in failure.reason and failure.fix == "create the file or fix the path"


# -- --pii_key_secret in ValidateEvents ---------------------------------------------------------
_PII_SPEC = "name: fraud\nfeatures: [{name: country, type: text, pii: hash}]"


def _no_env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PREDAUDIT_PII_KEY", "PREDAUDIT_PII_KEY_FILE", PII_KEY_SECRET_ENV):
        monkeypatch.delenv(name, raising=False)


def test_validate_events_resolves_pii_key_secret_on_the_worker(fake_sm, monkeypatch) -> None:
    """``--pii_key_secret`` alone (no environment key): the graph holds the reference, the
    DoFn's setup resolves it through Secret Manager, and the rows' PII is hashed with it."""
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to

    from schemas.specs import parse_spec
    from tests.helpers import event, raw
    from transforms.deadletters import RawMessage
    from transforms.validate import ValidateEvents

    _no_env_key(monkeypatch)
    validate = ValidateEvents("prediction", specs={"fraud": parse_spec(_PII_SPEC)}, pii_key_secret=REF)
    assert fake_sm.calls == []  # nothing resolved where the graph is built
    assert VALUE not in pickle.dumps(validate._fn)
    with TestPipeline() as p:
        rows = (p | beam.Create([RawMessage(raw(event()), {})]) | validate).rows | beam.Map(
            lambda r: orjson.loads(r["features"])["country"]
        )
        assert_that(rows, equal_to([PiiKey(VALUE).hash("DE")]))
    assert fake_sm.calls == [REF]  # resolved on the worker, once per process


def test_validate_events_without_any_key_fails_at_graph_construction(monkeypatch) -> None:
    from schemas.specs import SpecError, parse_spec
    from transforms.validate import ValidateEvents

    _no_env_key(monkeypatch)
    with pytest.raises(SpecError):
        ValidateEvents("prediction", specs={"fraud": parse_spec(_PII_SPEC)})
    with pytest.raises(SecretError) as info:
        ValidateEvents(
            "prediction", specs={"fraud": parse_spec(_PII_SPEC)}, pii_key_secret="projects/p/secrets/s"
        )
    assert info.value.code == "bad_secret_ref"


def test_an_unreadable_pii_key_secret_fails_the_worker_setup_with_one_line(tmp_path, monkeypatch) -> None:
    from schemas.specs import parse_spec
    from transforms.validate import ValidateEvents

    _no_env_key(monkeypatch)
    fn = ValidateEvents(
        "prediction", specs={"fraud": parse_spec(_PII_SPEC)}, pii_key_secret=str(tmp_path / "absent")
    )._fn
    with pytest.raises(SecretError) as info:
        pickle.loads(pickle.dumps(fn)).setup()
    assert info.value.code == "secret_file_missing"
