"""The OCI distribution API client.

Why not oras-py (a project dependency) for this? Measured defects (FACTS.md):
its retry decorator retries every exception and every 500 five times with
2+3^n s sleeps and no request timeout (131 s before "connection refused"
surfaces); its token auth cannot push to a fresh repository and its config
reader ignores ``DOCKER_CONFIG``; ``get_manifest`` returns a dict and
``upload_manifest`` re-serialises it (new digest) with a fixed OCI content type;
and it has no API for digest-by-tag, retag, mount, referrers or tag delete.
What would remain to reuse (tag pagination, a challenge parser) is ~40 lines
that sit on the request path, where its decorator and session would come
along. So this package takes nothing from oras at runtime: it is written on its
own transport (:mod:`reconciler.registry.transport`, on http.client connections)
that we control, and manifests stay bytes end to end. oras-py remains useful as an
independent client in ad-hoc checks, not in the product's request path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from urllib.parse import quote, urljoin

from reconciler.registry.auth import Credential, DockerCredentials, scope
from reconciler.registry.config import HostConfig, api_host, canonical_host
from reconciler.registry.connections import Response, WireError
from reconciler.registry.errors import (
    DigestMismatch,
    InvalidManifest,
    NotFound,
    RegistryRefused,
    RegistryUnavailable,
    ResponseTooLarge,
    Unsupported,
)
from reconciler.registry.oci import (
    MANIFEST_ACCEPT,
    OCI_EMPTY,
    OCI_INDEX,
    OCI_MANIFEST,
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
from reconciler.registry.reference import check_repository
from reconciler.registry.transport import Transport, error_codes

log = logging.getLogger(__name__)

_CHUNK = 1 << 16
# Manifests are small; refuse to buffer anything absurd a server might send.
MAX_MANIFEST = 4 << 20
MAX_TAG_PAGE = 16 << 20  # ~400,000 tags in one page
MAX_TAG_PAGES = 1000
_BUFFER_LIMIT = 1 << 20
_UPLOAD_SESSIONS = 3  # fresh sessions one buffered upload may start
# A manifest PUT refused with these while all it names exists is a storage race.
_RACE_CODES = frozenset({"MANIFEST_BLOB_UNKNOWN", "BLOB_UNKNOWN", "DIGEST_INVALID"})
_RACE_ATTEMPTS = 4
EMPTY_JSON = b"{}"
# The artifact type of the throwaway manifest that deletes one tag (see delete_tag).
TAG_DELETION = "application/vnd.reconciler.tag-deletion.v1"


class HttpRegistry:
    """One registry host spoken to over the OCI distribution API."""

    def __init__(
        self,
        host: str,
        config: HostConfig | None = None,
        credentials: DockerCredentials | None = None,
        stats: RequestStats | None = None,
        sleep: Callable[[float], None] | None = None,
        *,
        certs_dirs: tuple[str, ...] | None = None,
    ) -> None:
        # Docker Hub is named docker.io (credentials, settings, messages) but its API
        # answers at registry-1.docker.io.
        self.name = canonical_host(host)
        self.config = config or HostConfig()
        self.stats = stats or RequestStats()
        creds = credentials or DockerCredentials()
        name = self.name

        def credential() -> Credential | None:
            return creds.lookup(name)

        self._t = Transport(
            name,
            self.config,
            credential,
            self.stats,
            sleep if sleep is not None else _default_sleep,
            endpoint=api_host(host),
            certs_dirs=certs_dirs,
        )
        self._referrers_api: bool | None = None
        self._tag_delete_api: bool | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"HttpRegistry({self.name!r})"

    def close(self) -> None:
        """Close the host's connections."""
        self._t.close()

    # -- manifests -------------------------------------------------------------

    def resolve(self, repo: str, tag: str) -> str | None:
        """The digest ``tag`` points at, or None when the tag (or repo) is absent."""
        path = self._manifest_path(repo, check_tag(tag))
        response = self._t.request(
            "HEAD", path, scopes=[scope(repo, "pull")], headers={"Accept": MANIFEST_ACCEPT}
        )
        if response.status_code == 404:
            response.close()
            return None
        if response.status_code != 200:
            raise self._t.fail(response, f"resolve {repo}:{tag}")
        digest = response.headers.get("Docker-Content-Digest")
        response.close()
        if digest:
            return check_digest(digest)
        # Some registries omit the header on HEAD: hash the body instead.
        got = self._get_manifest(repo, tag)
        return None if got is None else got.digest

    def manifest_exists(self, repo: str, digest: str) -> bool:
        """A HEAD of the manifest: True on 200, False on 404.

        Raises:
            RegistryError: any other answer (after the transport's retries).
        """
        path = self._manifest_path(repo, check_digest(digest))
        response = self._t.request(
            "HEAD", path, scopes=[scope(repo, "pull")], headers={"Accept": MANIFEST_ACCEPT}
        )
        response.close()
        if response.status_code == 200:
            return True
        if response.status_code == 404:
            return False
        raise self._t.fail(response, f"check manifest {repo}@{digest}")

    def get_manifest(self, repo: str, ref: str) -> Manifest:
        """Manifest bytes by digest (verified) or tag; NotFound when absent."""
        got = self._get_manifest(repo, ref)
        if got is None:
            raise NotFound(f"{self.name}: manifest {repo}{_at(ref)} not found")
        return got

    def _get_manifest(self, repo: str, ref: str) -> Manifest | None:
        ref = check_digest(ref) if is_digest(ref) else check_tag(ref)
        response = self._t.request(
            "GET",
            self._manifest_path(repo, ref),
            scopes=[scope(repo, "pull")],
            headers={"Accept": MANIFEST_ACCEPT},
            limit=MAX_MANIFEST,
        )
        if response.status_code == 404:
            response.close()
            return None
        if response.status_code != 200:
            raise self._t.fail(response, f"get manifest {repo}{_at(ref)}")
        data = response.content
        where = f"{self.name}/{repo}{_at(ref)}"
        if is_digest(ref):
            verify_digest(data, ref, where)
        else:
            header = response.headers.get("Docker-Content-Digest")
            if header and header.startswith("sha256:"):
                verify_digest(data, header, where)
        media_type = _media_type(data, response.headers.get("Content-Type"))
        return Manifest(data, media_type)

    def put_manifest(self, repo: str, ref: str, data: bytes, media_type: str | None = None) -> str:
        """PUT the exact bytes at a tag or digest; returns their digest."""
        digest = sha256_digest(data)
        if is_digest(ref):
            verify_digest(data, check_digest(ref), f"manifest for {repo}@{ref}")
        else:
            check_tag(ref)
        content_type = media_type or media_type_of(data)
        for attempt in range(_RACE_ATTEMPTS):
            response = self._t.request(
                "PUT",
                self._manifest_path(repo, ref),
                scopes=[scope(repo, "pull", "push")],
                headers={"Content-Type": content_type},
                data=data,
            )
            if response.status_code in (200, 201):
                break
            raced = response.status_code == 400 and bool(error_codes(response) & _RACE_CODES)
            if not raced or attempt == _RACE_ATTEMPTS - 1 or not self._references_exist(repo, data):
                raise self._t.fail(response, f"put manifest {repo}{_at(ref)}")
            # Everything it names is there: distribution's filesystem storage rewrote a
            # link another request was writing at that moment. Briefly, again.
            response.close()
            log.info("%s: %s%s refused, yet all it names exists; again", self.name, repo, _at(ref))
            self._t.pause(0.1 * (attempt + 1))
        stored = response.headers.get("Docker-Content-Digest")
        response.close()
        if stored and stored != digest:
            raise DigestMismatch(
                f"{self.name}: stored manifest {repo}{_at(ref)} as {stored}, sent {digest}",
                "the registry rewrote the manifest; it cannot hold signed content byte for byte",
            )
        log.debug("%s: put %s%s (%s)", self.name, repo, _at(ref), digest)
        return digest

    def _references_exist(self, repo: str, data: bytes) -> bool:
        """Every blob (config, layers) or child manifest ``data`` names is in ``repo``."""
        manifest = Manifest(data, media_type_of(data))
        if manifest.is_index:
            return all(self.manifest_exists(repo, c.digest) for c in manifest.children())
        return all(self.blob_exists(repo, b.digest) for b in manifest.blobs())

    def delete_tag(self, repo: str, tag: str, expected: str | None = None) -> None:
        """Delete one tag, never another tag's manifest.

        Through the tag-delete API where the registry has one. Where it has not
        (distribution 2.x deletes manifests by digest only, which removes every tag
        on it), regclient's method: point the tag at a throwaway manifest made unique
        to this deletion, then delete that digest, which no other tag can name. If the
        registry refuses deletes altogether, the tag is put back where it was and
        :class:`Unsupported` is raised. ``expected``: do nothing unless the tag is
        still there (compare-and-swap with the caller's observation).
        """
        check_tag(tag)
        current = self.resolve(repo, tag)
        if current is None:
            return
        if expected is not None and current != expected:
            log.warning("%s: not deleting %s:%s: it moved to %s", self.name, repo, tag, current)
            return
        if self._tag_delete_api is not False and self._delete_by_tag(repo, tag):
            return
        self._delete_through_throwaway(repo, tag, current)

    def _delete_by_tag(self, repo: str, tag: str) -> bool:
        response = self._t.request(
            "DELETE",
            self._manifest_path(repo, tag),
            scopes=[scope(repo, "pull", "push", "delete")],
        )
        status = response.status_code
        if status in (200, 202, 204):
            response.close()
            self._tag_delete_api = True
            log.info("%s: deleted tag %s:%s", self.name, repo, tag)
            return True
        codes = error_codes(response)
        if status in (400, 404, 405, 501) or "UNSUPPORTED" in codes:
            response.close()
            with self._lock:
                if self._tag_delete_api is None:
                    log.debug("%s has no tag-delete API; deleting through a throwaway", self.name)
                self._tag_delete_api = False
            return False
        raise self._t.fail(response, f"delete tag {repo}:{tag}")

    def _delete_through_throwaway(self, repo: str, tag: str, current: str) -> None:
        original = self.get_manifest(repo, current)
        throwaway = _throwaway_manifest(repo, tag)
        digest = sha256_digest(throwaway)
        if not self.blob_exists(repo, sha256_digest(EMPTY_JSON)):
            self.put_blob(repo, sha256_digest(EMPTY_JSON), len(EMPTY_JSON), [EMPTY_JSON])
        self.put_manifest(repo, tag, throwaway, OCI_MANIFEST)
        response = self._t.request(
            "DELETE",
            self._manifest_path(repo, digest),
            scopes=[scope(repo, "pull", "push", "delete")],
        )
        status = response.status_code
        if status in (200, 202, 204):
            response.close()
            if self.resolve(repo, tag) is not None:
                raise RegistryRefused(
                    f"{self.name}: {repo}:{tag} is still there after deleting it",
                    "the registry keeps tags of deleted manifests; delete the tag by hand",
                )
            log.info("%s: deleted tag %s:%s (through a throwaway manifest)", self.name, repo, tag)
            return
        failure = self._t.fail(response, f"delete {repo}@{digest}")
        # Put the tag back where it was: the caller asked to delete it, not to break it.
        if self.resolve(repo, tag) == digest:
            self.put_manifest(repo, tag, original.data, original.media_type)
        if isinstance(failure, Unsupported) or "UNSUPPORTED" in failure.message:
            raise Unsupported(
                f"registry {self.name} deletes nothing (cannot delete {repo}:{tag}): "
                f"{failure.message}",
                "enable deletes on the registry (distribution: storage.delete.enabled), "
                "or delete the tag by hand",
            )
        raise failure

    def list_tags(self, repo: str) -> list[str]:
        """All tags, following ``Link`` pagination; [] for an absent repository."""
        url = self._t.url(f"/v2/{_repo(repo)}/tags/list")
        tags: list[str] = []
        seen: set[str] = set()
        pages = 0
        while url:
            pages += 1
            if pages > MAX_TAG_PAGES:
                raise ResponseTooLarge(
                    f"{self.name}: tag list of {repo} has more than {MAX_TAG_PAGES} pages"
                )
            # A Link to another origin is followed without credentials (the transport).
            response = self._t.request("GET", url, scopes=[scope(repo, "pull")], limit=MAX_TAG_PAGE)
            if response.status_code == 404 and not tags:
                response.close()
                return []
            if response.status_code != 200:
                raise self._t.fail(response, f"list tags of {repo}")
            try:
                body = response.json()
            except ValueError:
                raise RegistryRefused(f"{self.name}: tag list of {repo} is not JSON") from None
            page = body.get("tags") if isinstance(body, dict) else None
            tags.extend(t for t in page or [] if isinstance(t, str))
            following = _next_link(response.headers.get("Link"))
            response.close()
            url = urljoin(url, following) if following else ""
            if url in seen:
                break
            seen.add(url)
        return tags

    # -- blobs -----------------------------------------------------------------

    def blob_exists(self, repo: str, digest: str) -> bool:
        """A HEAD of the blob: True on 200, False on 404.

        Raises:
            RegistryError: any other answer (after the transport's retries).
        """
        response = self._t.request(
            "HEAD", self._blob_path(repo, digest), scopes=[scope(repo, "pull")]
        )
        response.close()
        if response.status_code == 200:
            return True
        if response.status_code == 404:
            return False
        raise self._t.fail(response, f"check blob {repo}@{digest}")

    def mount_blob(self, repo: str, digest: str, from_repo: str) -> bool:
        """Cross-repository mount; True only on 201 (202 is a plain upload session)."""
        check_digest(digest)
        url = self._t.url(
            f"/v2/{_repo(repo)}/blobs/uploads/?mount={quote(digest)}&from={_repo(from_repo)}"
        )
        response = self._t.request(
            "POST", url, scopes=[scope(repo, "pull", "push"), scope(from_repo, "pull")]
        )
        status = response.status_code
        location = response.headers.get("Location")
        response.close()
        if status == 201:
            return True
        if status == 202:
            if location:  # tidy up the upload session the registry opened instead
                cancel = self._t.request(
                    "DELETE", urljoin(url, location), scopes=[scope(repo, "pull", "push")]
                )
                cancel.close()
            return False
        if status in (401, 403, 404):
            return False
        raise self._t.fail(response, f"mount {digest} from {from_repo} into {repo}")

    @contextmanager
    def open_blob(self, repo: str, digest: str) -> Iterator[Iterator[bytes]]:
        """Stream a blob's bytes; the caller checks the digest as it reads.

        The host's concurrency slot is held until the stream is closed, so open
        streams count against ``concurrency`` like any request.
        """
        with self._t.slot():
            # Exact bytes: no transfer compression, and nothing decoded on the way in.
            response = self._t.request(
                "GET",
                self._blob_path(repo, digest),
                scopes=[scope(repo, "pull")],
                headers={"Accept-Encoding": "identity"},
                stream=True,
            )
            if response.status_code != 200:
                raise self._t.fail(response, f"get blob {repo}@{digest}")
            try:
                yield _chunks(response, self.name)
            finally:
                response.close()

    def read_blob(self, repo: str, digest: str, max_bytes: int) -> bytes:
        """A small blob's bytes, at most ``max_bytes``, checked against ``digest`` once."""
        check_digest(digest)
        response = self._t.request(
            "GET",
            self._blob_path(repo, digest),
            scopes=[scope(repo, "pull")],
            headers={"Accept-Encoding": "identity"},
            limit=max_bytes,
        )
        if response.status_code != 200:
            raise self._t.fail(response, f"get blob {repo}@{digest}")
        data = response.content
        verify_digest(data, digest, f"blob {self.name}/{repo}@{digest}")
        return data

    def put_blob(self, repo: str, digest: str, size: int, chunks: Iterable[bytes]) -> None:
        """Monolithic upload (POST, then PUT with Content-Length), digest-checked.

        Blobs up to 1 MiB are buffered and verified before sending, so their upload
        can be retried; larger ones stream once, hashed on the way out. An upload
        session the registry no longer knows (``BLOB_UPLOAD_UNKNOWN``: it expired, or a
        retried request met a session already closed) is not retried: after a HEAD
        (the blob may be there already) the upload starts over from a new session.
        """
        check_digest(digest)
        stream = iter(chunks)
        small: bytes | None = None
        if size <= _BUFFER_LIMIT:
            small = b"".join(stream)
            if len(small) != size:
                raise DigestMismatch(
                    f"blob {digest} for {self.name}/{repo}: got {len(small)} bytes, "
                    f"expected {size}",
                    "the source served different content than its manifest names",
                )
            verify_digest(small, digest, f"blob for {self.name}/{repo}")
        for session in range(1, _UPLOAD_SESSIONS + 1):
            response = self._upload(repo, digest, size, stream if small is None else small)
            if response.status_code == 201:
                response.close()
                return
            lost = response.status_code == 404 and "BLOB_UPLOAD_UNKNOWN" in error_codes(response)
            if not lost:
                raise self._t.fail(response, f"upload {digest} to {repo}")
            response.close()
            if self.blob_exists(repo, digest):
                return
            if small is None or session == _UPLOAD_SESSIONS:
                raise RegistryUnavailable(
                    f"{self.name}: upload of {digest} to {repo}: the registry lost the upload "
                    f"session (BLOB_UPLOAD_UNKNOWN){'' if small is None else ' every time'}",
                    "the upload is started over when the step is retried",
                )
            log.info("%s: upload session of %s lost; starting over", self.name, digest[:19])

    def _upload(
        self, repo: str, digest: str, size: int, content: bytes | Iterator[bytes]
    ) -> Response:
        """One upload session: POST for a location, then PUT the bytes there."""
        start = self._t.request(
            "POST",
            self._t.url(f"/v2/{_repo(repo)}/blobs/uploads/"),
            scopes=[scope(repo, "pull", "push")],
        )
        if start.status_code != 202 or "Location" not in start.headers:
            raise self._t.fail(start, f"start upload of {digest} to {repo}")
        location = urljoin(start.url, start.headers["Location"])
        start.close()
        separator = "&" if "?" in location else "?"
        target = f"{location}{separator}digest={quote(digest)}"
        headers = {"Content-Type": "application/octet-stream"}
        scopes = [scope(repo, "pull", "push")]
        if isinstance(content, bytes):
            return self._t.request("PUT", target, scopes=scopes, headers=headers, data=content)
        reader = _HashingReader(content, size)
        response = self._t.request("PUT", target, scopes=scopes, headers=headers, body=reader)
        reader.check(digest, f"blob {digest} for {self.name}/{repo}")
        return response

    # -- referrers -------------------------------------------------------------

    def referrers(self, repo: str, digest: str) -> list[Descriptor]:
        """Referrers via the API, else the ``sha256-<hex>`` tag-schema index."""
        check_digest(digest)
        if self._referrers_api is not False:
            response = self._t.request(
                "GET",
                self._t.url(f"/v2/{_repo(repo)}/referrers/{digest}"),
                scopes=[scope(repo, "pull")],
                headers={"Accept": OCI_INDEX},
                limit=MAX_MANIFEST,
            )
            if response.status_code == 200:
                self._referrers_api = True
                data = response.content
                response.close()
                return _index_descriptors(data, f"{self.name}/{repo} referrers of {digest}")
            if response.status_code not in (404, 405, 400):
                raise self._t.fail(response, f"referrers of {repo}@{digest}")
            response.close()
            with self._lock:
                if self._referrers_api is None:
                    log.debug("%s has no referrers API; using the tag schema", self.name)
                self._referrers_api = False
        index = self._get_manifest(repo, referrers_tag(digest))
        if index is None:
            return []
        return _index_descriptors(index.data, f"{self.name}/{repo}:{referrers_tag(digest)}")

    @property
    def has_referrers_api(self) -> bool | None:
        """None until probed; the copy keeps tag-schema indexes when False."""
        return self._referrers_api

    # -- paths -----------------------------------------------------------------

    def _manifest_path(self, repo: str, ref: str) -> str:
        return self._t.url(f"/v2/{_repo(repo)}/manifests/{ref}")

    def _blob_path(self, repo: str, digest: str) -> str:
        return self._t.url(f"/v2/{_repo(repo)}/blobs/{check_digest(digest)}")


def _default_sleep(seconds: float) -> None:
    time.sleep(seconds)


def _throwaway_manifest(repo: str, tag: str) -> bytes:
    """An OCI manifest no other tag can point at: a fresh nonce is in its bytes."""
    empty = {"mediaType": OCI_EMPTY, "digest": sha256_digest(EMPTY_JSON), "size": 2}
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": TAG_DELETION,
        "config": empty,
        "layers": [empty],
        "annotations": {
            "dev.reconciler.delete-tag": f"{repo}:{tag}",
            "dev.reconciler.nonce": uuid.uuid4().hex,
            "org.opencontainers.image.created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
    }
    return json.dumps(doc, separators=(",", ":")).encode()


class _HashingReader:
    """A file-like upload body with a known length, hashing what it hands out."""

    def __init__(self, chunks: Iterable[bytes], size: int) -> None:
        self._iter = iter(chunks)
        self._buffer = b""
        self._size = size
        self._sent = 0
        self._hash = hashlib.sha256()

    def __len__(self) -> int:
        return self._size

    def read(self, n: int = -1) -> bytes:
        while (n < 0 or len(self._buffer) < n) and self._iter is not None:
            try:
                self._buffer += next(self._iter)
            except StopIteration:
                break
        if n < 0:
            out, self._buffer = self._buffer, b""
        else:
            out, self._buffer = self._buffer[:n], self._buffer[n:]
        self._hash.update(out)
        self._sent += len(out)
        return out

    def check(self, digest: str, what: str) -> None:
        while self.read(_CHUNK):  # drain what the server did not ask for
            pass
        actual = "sha256:" + self._hash.hexdigest()
        if actual != digest or self._sent != self._size:
            raise DigestMismatch(
                f"{what}: source sent {self._sent} bytes hashing to {actual}, "
                f"expected {self._size} bytes {digest}",
                "the source registry served different content than its manifest names",
            )


def _chunks(response: Response, host: str) -> Iterator[bytes]:
    try:
        yield from response.raw.stream(_CHUNK, decode_content=False)
    except (WireError, OSError):
        raise RegistryUnavailable(
            f"{host}: connection lost while reading a blob",
            "the registry went away mid-transfer; it will be retried",
        ) from None


def _index_descriptors(data: bytes, where: str) -> list[Descriptor]:
    doc = parse_document(data)
    items = doc.get("manifests") or []
    if not isinstance(items, list):
        raise InvalidManifest(f"{where}: 'manifests' is not a list")
    return [Descriptor.from_json(d, f"{where}: manifests[{i}]") for i, d in enumerate(items)]


def _media_type(data: bytes, content_type: str | None) -> str:
    try:
        return media_type_of(data)
    except InvalidManifest:
        if content_type:
            return content_type.split(";", 1)[0].strip()
        raise


def _next_link(header: str | None) -> str | None:
    """The target of ``Link: <url>; rel="next"``."""
    if not header:
        return None
    for part in header.split(","):
        target, _, params = part.partition(";")
        if 'rel="next"' in params.replace(" ", "") or "rel=next" in params.replace(" ", ""):
            return target.strip().strip("<>")
    return None


def _repo(repo: str) -> str:
    return check_repository(repo)


def _at(ref: str) -> str:
    return f"@{ref}" if is_digest(ref) else f":{ref}"
