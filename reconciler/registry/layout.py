"""An OCI image layout store: one repository per directory, tags in ``index.json``.

The on-disk format is the one skopeo's ``oci:`` transport reads and writes: blobs
under ``blobs/sha256/``, tags as ``org.opencontainers.image.ref.name`` annotations
on ``index.json`` entries. Blobs are written to a temp file, verified, then renamed;
``index.json`` is rewritten as temp + ``os.replace`` under an ``flock`` on the
directory, so a reader never sees half a file and concurrent writers do not lose
each other's tags. Like a registry, a manifest is refused while a blob or child
it names is missing, which keeps copies ordered children-first.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from reconciler.registry.errors import (
    DigestMismatch,
    InvalidManifest,
    InvalidReference,
    NotFound,
    RegistryRefused,
    ResponseTooLarge,
)
from reconciler.registry.oci import (
    OCI_INDEX,
    REF_NAME,
    Descriptor,
    Manifest,
    check_digest,
    check_tag,
    is_digest,
    media_type_of,
    parse_document,
    referrers_tag,
    sha256_digest,
    verify_digest,
)
from reconciler.registry.pacing import RequestStats
from reconciler.registry.reference import LAYOUT_PREFIX

log = logging.getLogger(__name__)

_CHUNK = 1 << 16
MAX_MANIFEST = 4 << 20
MAX_INDEX = 64 << 20  # index.json of a layout with ~300,000 tags
_LAYOUT_FILE = b'{"imageLayoutVersion":"1.0.0"}'


class LayoutRegistry:
    """OCI layouts under ``root`` (relative repos) or anywhere (absolute repos)."""

    has_referrers_api = False

    def __init__(
        self, root: str | os.PathLike[str] | None = None, stats: RequestStats | None = None
    ):
        self.root = Path(root).resolve() if root is not None else None
        self.name = f"{LAYOUT_PREFIX}{self.root}" if self.root else LAYOUT_PREFIX
        self.stats = stats or RequestStats()
        self._locks: dict[Path, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def __repr__(self) -> str:
        return f"LayoutRegistry({self.name!r})"

    def close(self) -> None:
        """Nothing to release; present for the Registry protocol."""

    # -- manifests -------------------------------------------------------------

    def resolve(self, repo: str, tag: str) -> str | None:
        """The digest ``index.json`` names for ``tag`` (the last entry, if several do)."""
        check_tag(tag)
        self._count("HEAD")
        found = None
        for entry in self._read_index(self._dir(repo)).get("manifests", []):
            if _ref_name(entry) == tag:
                found = entry.get("digest")
        return check_digest(found) if isinstance(found, str) else None

    def manifest_exists(self, repo: str, digest: str) -> bool:
        """Whether the manifest's blob file exists."""
        self._count("HEAD")
        return self._blob_path(self._dir(repo), digest).is_file()

    def get_manifest(self, repo: str, ref: str) -> Manifest:
        """The manifest by digest, or by tag through ``index.json``; read capped and verified.

        Raises:
            NotFound: no such tag or manifest.
            DigestMismatch: the file does not hash to its name.
        """
        if not is_digest(ref):
            digest = self.resolve(repo, ref)
            if digest is None:
                raise NotFound(f"{self.name}: manifest {repo}:{ref} not found")
            ref = digest
        self._count("GET")
        path = self._blob_path(self._dir(repo), ref)
        data = _read_capped(path, MAX_MANIFEST, f"{self.name}: manifest {repo}@{ref}")
        verify_digest(data, ref, f"{repo}@{ref}")
        return Manifest(data, media_type_of(data))

    def put_manifest(self, repo: str, ref: str, data: bytes, media_type: str | None = None) -> str:
        """Store the manifest and, for a tag, point ``index.json`` at it (replacing the tag's
        entry), as a registry would: refused while a blob or child it names is missing.

        Raises:
            RegistryRefused: a blob or child manifest is missing.
            DigestMismatch: ``ref`` is a digest the bytes do not hash to.
        """
        digest = sha256_digest(data)
        if is_digest(ref):
            verify_digest(data, check_digest(ref), f"manifest for {repo}@{ref}")
            tag = None
        else:
            tag = check_tag(ref)
        manifest = Manifest(data, media_type or media_type_of(data))
        directory = self._dir(repo)
        self._ensure_layout(directory)
        self._check_complete(directory, manifest, repo)
        self._count("PUT")
        self._write_blob(directory, digest, [data], len(data))
        if tag is not None:
            entry = {"mediaType": manifest.media_type, "digest": digest, "size": len(data)}
            entry["annotations"] = {REF_NAME: tag}

            def retag(index: dict[str, Any]) -> None:
                kept = [e for e in index.get("manifests", []) if _ref_name(e) != tag]
                index["manifests"] = [*kept, entry]

            self._update_index(directory, retag)
        log.debug("%s: put %s%s (%s)", self.name, repo, f":{tag}" if tag else "", digest)
        return digest

    def delete_tag(self, repo: str, tag: str, expected: str | None = None) -> None:
        """Remove the tag's entry; blobs stay, other tags may still use them."""
        check_tag(tag)
        directory = self._dir(repo)
        current = self.resolve(repo, tag)
        if current is None or (expected is not None and current != expected):
            return
        self._count("DELETE")

        def untag(index: dict[str, Any]) -> None:
            index["manifests"] = [e for e in index.get("manifests", []) if _ref_name(e) != tag]

        self._update_index(directory, untag)

    def list_tags(self, repo: str) -> list[str]:
        """The tags ``index.json`` names, each once, in its order; [] without a layout."""
        self._count("GET")
        names = (_ref_name(e) for e in self._read_index(self._dir(repo)).get("manifests", []))
        return list(dict.fromkeys(n for n in names if n))

    # -- blobs -----------------------------------------------------------------

    def blob_exists(self, repo: str, digest: str) -> bool:
        """Whether the blob file exists."""
        self._count("HEAD")
        return self._blob_path(self._dir(repo), digest).is_file()

    def mount_blob(self, repo: str, digest: str, from_repo: str) -> bool:
        """Hard-link the blob from another layout (copy across filesystems)."""
        source = self._blob_path(self._dir(from_repo), digest)
        if not source.is_file():
            return False
        directory = self._dir(repo)
        self._ensure_layout(directory)
        target = self._blob_path(directory, digest)
        if target.is_file():
            return True
        self._count("POST")
        tmp = _temp_name(target)
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)
        return True

    @contextmanager
    def open_blob(self, repo: str, digest: str) -> Iterator[Iterator[bytes]]:
        """The blob file in chunks.

        Raises:
            NotFound: no such blob.
        """
        self._count("GET")
        path = self._blob_path(self._dir(repo), digest)
        try:
            handle = path.open("rb")
        except FileNotFoundError:
            raise NotFound(f"{self.name}: blob {repo}@{digest} not found") from None
        with handle:
            yield iter(lambda: handle.read(_CHUNK), b"")

    def read_blob(self, repo: str, digest: str, max_bytes: int) -> bytes:
        """A small blob's bytes, at most ``max_bytes``, checked against ``digest`` once."""
        self._count("GET")
        path = self._blob_path(self._dir(repo), digest)
        data = _read_capped(path, max_bytes, f"{self.name}: blob {repo}@{digest}")
        verify_digest(data, digest, f"blob {repo}@{digest}")
        return data

    def put_blob(self, repo: str, digest: str, size: int, chunks: Iterable[bytes]) -> None:
        """Store a blob (temp file, verified, renamed); a blob already there is kept.

        Raises:
            DigestMismatch: the chunks do not hash to ``digest``.
        """
        directory = self._dir(repo)
        self._ensure_layout(directory)
        self._count("PUT")
        self._write_blob(directory, digest, chunks, size)

    # -- referrers -------------------------------------------------------------

    def referrers(self, repo: str, digest: str) -> list[Descriptor]:
        """The ``sha256-<hex>`` index, plus untagged entries whose subject is ``digest``."""
        check_digest(digest)
        found: dict[str, Descriptor] = {}
        tag = referrers_tag(digest)
        if self.resolve(repo, tag) is not None:
            index = self.get_manifest(repo, tag)
            for d in index.children():
                found.setdefault(d.digest, d)
        directory = self._dir(repo)
        for entry in self._read_index(directory).get("manifests", []):
            if _ref_name(entry) or not isinstance(entry, dict):
                continue
            candidate = entry.get("digest")
            if not isinstance(candidate, str) or candidate in found:
                continue
            with contextlib.suppress(NotFound, InvalidManifest):
                manifest = self.get_manifest(repo, candidate)
                subject = manifest.subject()
                if subject is not None and subject.digest == digest:
                    found[candidate] = manifest.descriptor()
        return list(found.values())

    # -- storage ---------------------------------------------------------------

    def _dir(self, repo: str) -> Path:
        path = Path(repo)
        if not path.is_absolute():
            if self.root is None:
                raise InvalidReference(
                    f"layout repository {repo!r} is not an absolute directory",
                    "write oci:/absolute/directory",
                )
            if ".." in path.parts:
                raise InvalidReference(f"layout repository {repo!r} leaves the layout root")
            path = self.root / path
        return path

    @staticmethod
    def _blob_path(directory: Path, digest: str) -> Path:
        algorithm, _, hexpart = check_digest(digest).partition(":")
        return directory / "blobs" / algorithm / hexpart

    def _count(self, method: str) -> None:
        self.stats.record(self.name, method, "ok")

    def _read_index(self, directory: Path) -> dict[str, Any]:
        path = directory / "index.json"
        if not path.is_file():
            return {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
        data = _read_capped(path, MAX_INDEX, f"{path}")
        try:
            index = parse_document(data)
        except InvalidManifest:
            raise InvalidManifest(
                f"{directory}/index.json is not a JSON object",
                "the layout is damaged; re-create it",
            ) from None
        if not isinstance(index.get("manifests", []), list):
            raise InvalidManifest(f"{directory}/index.json: 'manifests' is not a list")
        return index

    def _ensure_layout(self, directory: Path) -> None:
        (directory / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        marker = directory / "oci-layout"
        if not marker.exists():
            _atomic_write(marker, _LAYOUT_FILE)
        if not (directory / "index.json").exists():
            self._update_index(directory, lambda index: None)

    def _update_index(self, directory: Path, change: Callable[[dict[str, Any]], None]) -> None:
        with self._locks_guard:
            lock = self._locks.setdefault(directory, threading.Lock())
        with lock, _flock(directory):
            index = self._read_index(directory)
            index.setdefault("schemaVersion", 2)
            index.setdefault("mediaType", OCI_INDEX)
            index.setdefault("manifests", [])
            change(index)
            _atomic_write(directory / "index.json", json.dumps(index, indent=2).encode())

    def _check_complete(self, directory: Path, manifest: Manifest, repo: str) -> None:
        needed = manifest.children() + manifest.blobs()
        missing = [d.digest for d in needed if not self._blob_path(directory, d.digest).is_file()]
        if missing:
            raise RegistryRefused(
                f"{self.name}: manifest {manifest.digest} for {repo} names "
                f"{len(missing)} missing blob(s) or child manifest(s), e.g. {missing[0]}",
                "copy children and blobs before the manifest that names them",
            )

    def _write_blob(self, directory: Path, digest: str, chunks: Iterable[bytes], size: int) -> None:
        target = self._blob_path(directory, digest)
        if target.is_file():
            return
        hasher = hashlib.sha256()
        written = 0
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    hasher.update(chunk)
                    written += len(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            actual = "sha256:" + hasher.hexdigest()
            if actual != digest or written != size:
                raise DigestMismatch(
                    f"blob for {directory}: got {written} bytes hashing to {actual}, "
                    f"expected {size} bytes {digest}",
                    "the source served different content than its manifest names",
                )
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


def _read_capped(path: Path, limit: int, what: str) -> bytes:
    try:
        with path.open("rb") as handle:
            data = handle.read(limit + 1)
    except FileNotFoundError:
        raise NotFound(f"{what} not found") from None
    if len(data) > limit:
        raise ResponseTooLarge(f"{what} is over the {limit:,}-byte limit")
    return data


def _ref_name(entry: object) -> str | None:
    if not isinstance(entry, dict):
        return None
    annotations = entry.get("annotations")
    name = annotations.get(REF_NAME) if isinstance(annotations, dict) else None
    return name if isinstance(name, str) else None


def _temp_name(target: Path) -> Path:
    return target.with_name(f".tmp-{target.name}-{os.getpid()}-{threading.get_ident()}")


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextmanager
def _flock(directory: Path) -> Iterator[None]:
    """Exclusive lock across processes, taken on the layout directory itself."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
