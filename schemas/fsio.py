"""Read spec and reference files from any Beam filesystem: local paths, ``gs://``, ``s3://`` ...

``pathlib`` reads only local paths (``pathlib.Path("gs://b/specs")`` is ``gs:/b/specs``, which does
not exist); Beam's ``FileSystems`` picks the filesystem by the path's scheme, so the same
``--model_specs`` / ``--references`` value works in the launcher (graph construction) and on the
workers. Local paths keep their plain-file behaviour (no Beam import is needed for them).
"""

from __future__ import annotations

import fnmatch
import os
import pathlib
import re

_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.\-]*://")


def is_remote(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a Beam filesystem other than the local one (it has a ``scheme://``).

    >>> is_remote("gs://bucket/specs/"), is_remote("/srv/specs"), is_remote("specs/m.yaml")
    (True, False, False)
    """
    return bool(_SCHEME.match(os.fspath(path)))


def join(folder: str | os.PathLike, name: str) -> str:
    """``name`` inside ``folder``, with ``/`` for remote paths.

    >>> join("gs://b/refs", "m.json"), join("gs://b/refs/", "m.json"), join("refs", "m.json")
    ('gs://b/refs/m.json', 'gs://b/refs/m.json', 'refs/m.json')
    """
    folder = os.fspath(folder)
    if is_remote(folder):
        return folder.rstrip("/") + "/" + name
    return str(pathlib.Path(folder) / name)


def read_bytes(path: str | os.PathLike) -> bytes:
    """The whole content of one file; FileNotFoundError if there is none."""
    path = os.fspath(path)
    if not is_remote(path):
        return pathlib.Path(path).read_bytes()
    from apache_beam.io.filesystems import FileSystems

    if not is_file(path):
        raise FileNotFoundError(path)
    with FileSystems.open(path, compression_type="uncompressed") as fh:
        return fh.read()


def list_files(pattern: str | os.PathLike) -> list[str]:
    """Sorted paths of the files matching a glob (``*``, ``?``, ``[...]``); [] when none match."""
    pattern = os.fspath(pattern)
    if not is_remote(pattern):
        return sorted(str(p) for p in pathlib.Path(pattern).parent.glob(pathlib.Path(pattern).name))
    from apache_beam.io.filesystems import FileSystems

    (result,) = FileSystems.match([pattern])
    return sorted(m.path for m in result.metadata_list)


def is_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is one existing file (a remote object, not a prefix)."""
    path = os.fspath(path)
    if not is_remote(path):
        return pathlib.Path(path).is_file()
    if path.endswith("/") or any(c in path for c in "*?["):
        return False
    from apache_beam.io.filesystems import FileSystems

    (result,) = FileSystems.match([path])
    return any(m.path == path for m in result.metadata_list)


def folder_files(path: str | os.PathLike, patterns: tuple[str, ...]) -> list[str] | None:
    """The files ``path`` stands for: ``[path]`` if it is a file, else the folder's files matching
    any of ``patterns`` (sorted); None when ``path`` is neither a file nor a folder with files.

    A remote "folder" is a prefix: it exists when some object lies under it.
    """
    path = os.fspath(path)
    if is_file(path):
        return [path]
    if not is_remote(path):
        folder = pathlib.Path(path)
        if not folder.is_dir():
            return None
        return sorted({str(f) for pat in patterns for f in folder.glob(pat)})
    everything = list_files(join(path, "*"))
    if not everything:
        return None
    return sorted(f for f in everything if any(fnmatch.fnmatch(f.rsplit("/", 1)[-1], p) for p in patterns))
