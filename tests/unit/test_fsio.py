"""schemas.fsio reads through Beam FileSystems: a non-local scheme works like a local path.

``memfs://`` below is a real Beam FileSystem (registered by subclassing, as GCSFileSystem is),
object-store shaped like GCS: no directories, a "folder" is a key prefix.
"""

from __future__ import annotations

import io
import pathlib

import pytest
from apache_beam.io.filesystem import FileMetadata, FileSystem
from apache_beam.io.filesystems import FileSystems

from schemas import fsio
from schemas.specs import parse_spec

ROOT = pathlib.Path(__file__).resolve().parents[2]


class MemFileSystem(FileSystem):
    """An in-memory object store under ``memfs://`` (class-level: Beam makes a new instance per call)."""

    objects: dict[str, bytes] = {}

    @classmethod
    def scheme(cls) -> str:
        return "memfs"

    def join(self, basepath, *paths):
        return "/".join([basepath.rstrip("/"), *paths])

    def split(self, path):
        head, _, tail = path.rpartition("/")
        return head, tail

    def mkdirs(self, path):
        pass

    def has_dirs(self):
        return False

    def _list(self, dir_or_prefix):
        for path, data in sorted(self.objects.items()):
            if path.startswith(dir_or_prefix):
                yield FileMetadata(path, len(data))

    def create(self, path, mime_type="application/octet-stream", compression_type=None):
        raise NotImplementedError

    def open(self, path, mime_type="application/octet-stream", compression_type=None):
        return io.BytesIO(self.objects[path])

    def copy(self, source_file_names, destination_file_names):
        raise NotImplementedError

    def rename(self, source_file_names, destination_file_names):
        raise NotImplementedError

    def exists(self, path):
        return path in self.objects

    def size(self, path):
        return len(self.objects[path])

    def last_updated(self, path):
        return 0.0

    def checksum(self, path):
        return str(hash(self.objects[path]))

    def metadata(self, path):
        return FileMetadata(path, len(self.objects[path]))

    def delete(self, paths):
        for p in paths:
            self.objects.pop(p, None)


@pytest.fixture
def bucket():
    spec = (ROOT / "schemas" / "models").glob("*.yaml")
    MemFileSystem.objects = {f"memfs://bucket/specs/{p.name}": p.read_bytes() for p in sorted(spec)}
    MemFileSystem.objects["memfs://bucket/specs/README.txt"] = b"not a spec"
    MemFileSystem.objects["memfs://bucket/refs/m.json"] = b'{"model": "m"}'
    yield MemFileSystem.objects
    MemFileSystem.objects = {}


def test_gs_paths_go_to_beams_gcs_filesystem() -> None:
    from apache_beam.io.gcp.gcsfilesystem import GCSFileSystem

    assert isinstance(FileSystems.get_filesystem("gs://b/specs/"), GCSFileSystem)
    assert fsio.is_remote("gs://b/specs/") and not fsio.is_remote("/srv/specs")


def test_remote_file_and_folder(bucket) -> None:
    names = sorted(p.name for p in (ROOT / "schemas" / "models").glob("*.yaml"))
    assert names, "the package ships model specs"
    assert fsio.read_bytes("memfs://bucket/refs/m.json") == b'{"model": "m"}'
    assert fsio.is_file("memfs://bucket/refs/m.json")
    assert not fsio.is_file("memfs://bucket/refs")  # a prefix, not an object
    for folder in ("memfs://bucket/specs", "memfs://bucket/specs/"):
        files = fsio.folder_files(folder, ("*.yaml", "*.yml"))
        assert files == [f"memfs://bucket/specs/{n}" for n in names]
    assert fsio.folder_files("memfs://bucket/specs/README.txt", ("*.yaml",)) == [
        "memfs://bucket/specs/README.txt"
    ]
    assert fsio.folder_files("memfs://bucket/refs", ("*.yaml",)) == []  # a folder without specs
    assert fsio.folder_files("memfs://bucket/nothing", ("*.yaml",)) is None
    assert fsio.list_files("memfs://bucket/specs/*.txt") == ["memfs://bucket/specs/README.txt"]
    with pytest.raises(FileNotFoundError):
        fsio.read_bytes("memfs://bucket/refs/other.json")


def test_specs_parse_the_same_from_remote_and_local(bucket, tmp_path) -> None:
    local = {p.name: parse_spec(p.read_bytes(), str(p)) for p in (ROOT / "schemas" / "models").glob("*.yaml")}
    remote = {
        f.rsplit("/", 1)[-1]: parse_spec(fsio.read_bytes(f), f)
        for f in fsio.folder_files("memfs://bucket/specs", ("*.yaml", "*.yml")) or []
    }
    assert remote == local


def test_local_paths_behave_like_pathlib(tmp_path) -> None:
    (tmp_path / "a.yaml").write_text("x")
    (tmp_path / "b.yml").write_text("y")
    (tmp_path / "c.txt").write_text("z")
    assert fsio.folder_files(tmp_path, ("*.yaml", "*.yml")) == [
        str(tmp_path / "a.yaml"),
        str(tmp_path / "b.yml"),
    ]
    assert fsio.folder_files(tmp_path / "a.yaml", ("*.yaml",)) == [str(tmp_path / "a.yaml")]
    assert fsio.folder_files(tmp_path / "missing", ("*.yaml",)) is None
    assert fsio.read_bytes(tmp_path / "c.txt") == b"z"
    assert fsio.list_files(str(tmp_path / "*.y*ml")) == [str(tmp_path / "a.yaml"), str(tmp_path / "b.yml")]
