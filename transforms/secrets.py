"""Secrets that must reach Dataflow workers: the PII key and the ClickHouse password.

A secret is named by a reference, never by its value, so the value is not in the pipeline
graph, the template parameters, the job's display data or a log line:

- ``projects/P/secrets/S/versions/V`` (``V`` a number or ``latest``): Google Secret Manager,
  read with ``access_secret_version`` by the worker's service account, which needs
  ``roles/secretmanager.secretAccessor`` on the secret;
- ``file:///path`` or a path: a file on the machine that resolves it (trailing newline
  stripped), e.g. a mounted Kubernetes secret for the sidecar or a local run.

:class:`SecretRef` is what a DoFn holds (it pickles as the reference only); its
:meth:`SecretRef.value` resolves lazily, on the worker, once per process and reference.
Resolution errors are :class:`SecretError`: one line with a stable code, the reference
and the fix, never the value.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
import threading
from collections.abc import Callable
from typing import Any

_SM = re.compile(r"^projects/([^/\s]+)/secrets/([^/\s]+)/versions/([0-9]+|latest)$")
_SM_PARTIAL = re.compile(r"^projects/[^/\s]+/secrets/")
ACCESSOR_ROLE = "roles/secretmanager.secretAccessor"


class SecretError(Exception):
    """A secret that cannot be resolved. ``str()`` is the one line a user sees (no value).

    >>> str(SecretError("secret_not_found", "projects/p/secrets/s/versions/1", "create it"))
    'secret_not_found: projects/p/secrets/s/versions/1 -- fix: create it'
    """

    def __init__(self, code: str, ref: str, fix: str, detail: str = "") -> None:
        super().__init__(code, ref, fix, detail)
        self.code, self.ref, self.fix, self.detail = code, ref, fix, detail

    def __str__(self) -> str:
        detail = f" ({self.detail})" if self.detail else ""
        return f"{self.code}: {self.ref}{detail} -- fix: {self.fix}"

    def __reduce__(self):
        return (SecretError, (self.code, self.ref, self.fix, self.detail))


def is_secret_manager(ref: str) -> bool:
    """Whether ``ref`` names a Secret Manager version (else it is a file).

    >>> is_secret_manager("projects/p/secrets/pii/versions/latest"), is_secret_manager("/run/key")
    (True, False)
    """
    return bool(_SM.match(ref))


def check_ref(ref: str) -> str:
    """``ref`` if it is well formed, else SecretError (``bad_secret_ref``): for option checks.

    >>> check_ref("projects/p/secrets/s/versions/3")
    'projects/p/secrets/s/versions/3'
    >>> check_ref("projects/p/secrets/s")
    Traceback (most recent call last):
    ...
    transforms.secrets.SecretError: bad_secret_ref: projects/p/secrets/s -- fix: name a version: projects/P/secrets/S/versions/V (a number or latest), or a file path
    """
    if _SM_PARTIAL.match(ref) and not _SM.match(ref):
        raise SecretError(
            "bad_secret_ref",
            ref,
            "name a version: projects/P/secrets/S/versions/V (a number or latest), or a file path",
        )
    if not ref.strip():
        raise SecretError("bad_secret_ref", repr(ref), "give projects/P/secrets/S/versions/V or a file path")
    return ref


# -- Secret Manager client (injectable) -------------------------------------------------------
def _default_client() -> Any:
    try:
        from google.cloud import secretmanager
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise SecretError(
            "secret_manager_missing",
            "google-cloud-secret-manager",
            "install google-cloud-secret-manager (pip install 'google-cloud-secret-manager>=2.20,<3')",
            str(exc),
        ) from None
    return secretmanager.SecretManagerServiceClient()


_client_factory: Callable[[], Any] = _default_client
_cache: dict[str, bytes] = {}
_lock = threading.Lock()


def set_client_factory(factory: Callable[[], Any] | None) -> None:
    """Use ``factory()`` for the Secret Manager client (tests inject a fake); None = the real one.

    Also forgets every resolved value, so the next ``value()`` asks the new client.
    """
    global _client_factory
    with _lock:
        _client_factory = factory or _default_client
        _cache.clear()


def _from_secret_manager(ref: str) -> bytes:
    from google.api_core import exceptions as gexc

    project = _SM.match(ref).group(1)  # type: ignore[union-attr]
    try:
        response = _client_factory().access_secret_version(request={"name": ref})
    except SecretError:
        raise
    except gexc.NotFound:
        raise SecretError(
            "secret_not_found",
            ref,
            f"create the secret version (`gcloud secrets versions add ... --project {project}`) "
            "or fix the reference",
        ) from None
    except (gexc.PermissionDenied, gexc.Unauthenticated):
        raise SecretError(
            "secret_access_denied",
            ref,
            f"grant {ACCESSOR_ROLE} on the secret to the workers' service account "
            f"(`gcloud secrets add-iam-policy-binding ... --role {ACCESSOR_ROLE} --project {project}`)",
        ) from None
    except gexc.FailedPrecondition:
        raise SecretError("secret_disabled", ref, "enable the secret version or name another") from None
    except gexc.GoogleAPICallError as exc:
        raise SecretError(
            "secret_unavailable", ref, "check that Secret Manager is reachable", type(exc).__name__
        ) from None
    return bytes(response.payload.data)


def _from_file(ref: str) -> bytes:
    path = pathlib.Path(ref.removeprefix("file://"))
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SecretError("secret_file_missing", str(path), "create the file or fix the path") from None
    except OSError as exc:
        raise SecretError(
            "secret_file_unreadable",
            str(path),
            "make the file readable by the pipeline's user",
            exc.strerror or "",
        ) from None
    return data.rstrip(b"\r\n")


def resolve(ref: str) -> bytes:
    """The secret's bytes (cached per process and reference); SecretError if it cannot be read
    or is empty. Never logs the value."""
    check_ref(ref)
    with _lock:
        if ref in _cache:
            return _cache[ref]
    data = _from_secret_manager(ref) if is_secret_manager(ref) else _from_file(ref)
    if not data:
        raise SecretError("secret_empty", ref, "store a non-empty value in the secret")
    with _lock:
        _cache[ref] = data
    return data


@dataclasses.dataclass(frozen=True)
class SecretRef:
    """A secret by reference: pickles as the reference, resolves on first use (on the worker).

    >>> r = SecretRef("projects/p/secrets/pii/versions/2")
    >>> r, str(r)
    (SecretRef('projects/p/secrets/pii/versions/2'), 'projects/p/secrets/pii/versions/2')
    """

    ref: str

    def value(self) -> bytes:
        return resolve(self.ref)

    def text(self) -> str:
        return self.value().decode()

    def __repr__(self) -> str:  # the reference only: safe in logs and display data
        return f"SecretRef({self.ref!r})"

    def __str__(self) -> str:
        return self.ref
