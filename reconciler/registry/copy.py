"""Copy a whole artifact, byte for byte, between repositories or registries.

Order is what makes an interrupted copy harmless: blobs before the manifest that
names them, children before their index, a manifest's referrers and signatures
after it, and the requested tag last of all. So a failure at any point leaves no
tag on anything incomplete, and re-running finishes the job (present manifests
are not re-sent).

Cosign's ``sha256-<hex>.sig``/``.att``/``.sbom`` tags are merged, not overwritten:
when the destination already holds its own (its own signature of the same digest),
the result carries the destination's layers followed by the source's (like
``cosign sign`` appending a signature, and like a merged referrers index), with the
image config's ``rootfs.diff_ids`` following the layers.

Referrers form a graph that can loop (an index whose child has the index as a
referrer: regclient-testrepo's ``loop``), so each digest is visited once. The
copy runs in two phases per artifact -- the manifest tree, then the referrers of
every manifest in it -- so that whenever a referrers index is written, every
manifest it names has already been stored.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from reconciler.registry.base import Registry
from reconciler.registry.oci import (
    COSIGN_SUFFIXES,
    OCI_EMPTY,
    Descriptor,
    Manifest,
    build_index,
    check_digest,
    check_tag,
    referrers_tag,
    sha256_digest,
)

log = logging.getLogger(__name__)

MAX_CONFIG_BYTES = 1 << 20


@dataclass
class CopyResult:
    """What a copy did; all zero counts and no tags mean "already there"."""

    digest: str
    manifests_put: int = 0
    manifests_present: int = 0
    blobs_copied: int = 0
    blobs_mounted: int = 0
    blobs_present: int = 0
    bytes_copied: int = 0
    referrers: int = 0
    tags: list[str] = field(default_factory=list)


def copy_artifact(
    src: Registry,
    src_repo: str,
    digest: str,
    dst: Registry,
    dst_repo: str,
    *,
    tag: str | None = None,
    referrers: bool = True,
) -> CopyResult:
    """Copy ``digest`` (manifest or index) with children, blobs and referrers.

    ``tag`` is written last, only after everything it reaches is stored. With
    ``referrers`` the artifact's referrers (API or ``sha256-<hex>`` index) and
    cosign ``sha256-<hex>.sig``/``.att``/``.sbom`` tags come along, recursively.
    """
    check_digest(digest)
    if tag is not None:
        check_tag(tag)
    job = _Copy(src, src_repo, dst, dst_repo, CopyResult(digest), referrers)
    root = job.graph(digest)
    if tag is not None and dst.resolve(dst_repo, tag) != digest:
        dst.put_manifest(dst_repo, tag, root.data, root.media_type)
        job.result.tags.append(tag)
    log.info(
        "copied %s@%s to %s%s: %d manifests, %d blobs (%d mounted, %d present)",
        _where(src, src_repo), digest, _where(dst, dst_repo), f":{tag}" if tag else "",
        job.result.manifests_put, job.result.blobs_copied + job.result.blobs_mounted,
        job.result.blobs_mounted, job.result.blobs_present,
    )  # fmt: skip
    return job.result


class _Copy:
    def __init__(
        self,
        src: Registry,
        src_repo: str,
        dst: Registry,
        dst_repo: str,
        result: CopyResult,
        with_referrers: bool,
    ) -> None:
        self.src, self.src_repo, self.dst, self.dst_repo = src, src_repo, dst, dst_repo
        self.result = result
        self.with_referrers = with_referrers
        self.same_store = type(src) is type(dst) and src.name == dst.name
        self.visited: set[str] = set()
        self.blobs_done: set[str] = set()
        self.manifests: dict[str, Manifest] = {}

    def graph(self, digest: str) -> Manifest:
        """Copy one artifact's tree, then the referrers of each manifest in it."""
        tree: list[str] = []
        self._tree(digest, tree)
        if self.with_referrers:
            for member in tree:
                self._referrers(member)
        return self.manifests[digest]

    def _tree(self, digest: str, tree: list[str]) -> None:
        if digest in self.visited:
            return
        self.visited.add(digest)
        manifest = self.src.get_manifest(self.src_repo, digest)
        self.manifests[digest] = manifest
        present = self.dst.manifest_exists(self.dst_repo, digest)
        for child in manifest.children():
            self._tree(child.digest, tree)
        if present:
            self.result.manifests_present += 1
        else:
            for blob in manifest.blobs():
                self._blob(blob)
            self.dst.put_manifest(self.dst_repo, digest, manifest.data, manifest.media_type)
            self.result.manifests_put += 1
        tree.append(digest)

    def _blob(self, blob: Descriptor) -> None:
        if blob.digest in self.blobs_done:
            return
        self.blobs_done.add(blob.digest)
        if blob.raw.get("urls") and (
            "foreign" in blob.media_type or "nondistributable" in blob.media_type
        ):
            return  # foreign layers live elsewhere; registries do not hold them
        if self.dst.blob_exists(self.dst_repo, blob.digest):
            self.result.blobs_present += 1
            return
        if self.same_store and self.dst.mount_blob(self.dst_repo, blob.digest, self.src_repo):
            self.result.blobs_mounted += 1
            return
        with self.src.open_blob(self.src_repo, blob.digest) as chunks:
            self.dst.put_blob(self.dst_repo, blob.digest, blob.size, chunks)
        self.result.blobs_copied += 1
        self.result.bytes_copied += blob.size

    def _referrers(self, digest: str) -> None:
        found = self.src.referrers(self.src_repo, digest)
        copied: list[Descriptor] = []
        for referrer in found:
            if referrer.digest not in self.visited and not self.src.manifest_exists(
                self.src_repo, referrer.digest
            ):
                log.warning(
                    "%s: referrer %s of %s is listed but missing; not copied",
                    _where(self.src, self.src_repo), referrer.digest, digest,
                )  # fmt: skip
                continue
            self.graph(referrer.digest)
            copied.append(referrer)
        self.result.referrers += len(copied)
        fallback = referrers_tag(digest)
        if found:
            self._referrers_index(digest, fallback, copied, complete=len(copied) == len(found))
        for suffix in COSIGN_SUFFIXES:
            tag = fallback + suffix
            target = self.src.resolve(self.src_repo, tag)
            if target is None:
                continue
            manifest = self.graph(target)
            current = self.dst.resolve(self.dst_repo, tag)
            if current == target:
                continue
            if current is not None:
                merged = self._merge_layers(
                    tag, self.dst.get_manifest(self.dst_repo, current), manifest
                )
                if merged is None:
                    continue  # the destination's already carries every source layer
                manifest = merged
            self.dst.put_manifest(self.dst_repo, tag, manifest.data, manifest.media_type)
            self.result.tags.append(tag)

    def _merge_layers(self, tag: str, ours: Manifest, theirs: Manifest) -> Manifest | None:
        """The destination's signature manifest plus the source's layers it lacks."""
        doc, other = ours.document(), theirs.document()
        layers, incoming = doc.get("layers"), other.get("layers")
        if not isinstance(layers, list) or not isinstance(incoming, list):
            log.warning("%s: %s is not a layered manifest; kept as it is", self.dst.name, tag)
            return None
        known = {_layer_key(layer) for layer in layers}
        new = [layer for layer in incoming if _layer_key(layer) not in known]
        if not new:
            return None
        merged: dict[str, Any] = dict(doc)
        merged["layers"] = layers + new
        config = doc.get("config")
        if isinstance(config, dict):
            merged["config"] = self._config_for(config, merged["layers"])
        data = json.dumps(merged, separators=(",", ":")).encode()
        log.info(
            "%s: merged %d signature layer(s) of %s into its %s",
            _where(self.dst, self.dst_repo), len(new), _where(self.src, self.src_repo), tag,
        )  # fmt: skip
        return Manifest(data, ours.media_type)

    def _config_for(self, config: dict[str, Any], layers: list[Any]) -> dict[str, Any]:
        """Cosign's image config lists each layer's diff id: keep it in step."""
        digest = config.get("digest")
        if not isinstance(digest, str) or not isinstance(config.get("size"), int):
            return config
        if config["size"] > MAX_CONFIG_BYTES or config.get("mediaType") == OCI_EMPTY:
            return config
        try:
            body = json.loads(self.dst.read_blob(self.dst_repo, digest, MAX_CONFIG_BYTES))
        except ValueError:
            return config
        rootfs = body.get("rootfs") if isinstance(body, dict) else None
        if not isinstance(rootfs, dict) or "diff_ids" not in rootfs:
            return config
        rootfs["diff_ids"] = [layer.get("digest") for layer in layers if isinstance(layer, dict)]
        data = json.dumps(body, separators=(",", ":")).encode()
        new_digest = sha256_digest(data)
        if not self.dst.blob_exists(self.dst_repo, new_digest):
            self.dst.put_blob(self.dst_repo, new_digest, len(data), [data])
        return {**config, "digest": new_digest, "size": len(data)}

    def _referrers_index(
        self, digest: str, tag: str, copied: list[Descriptor], *, complete: bool
    ) -> None:
        """Keep the tag-schema index on the destination in step with the source's.

        The source's index is copied verbatim when the destination has none or the
        same one; when the destination's differs (or a referrer was missing), the
        two are merged, and new bytes are unavoidable. A destination with a
        referrers API indexes referrers itself.
        """
        source_index = self.src.resolve(self.src_repo, tag)
        if self.dst.has_referrers_api is None:
            self.dst.referrers(self.dst_repo, digest)  # probes for the API
        if self.dst.has_referrers_api and source_index is None:
            return
        current = self.dst.resolve(self.dst_repo, tag)
        if source_index is not None and complete:
            if current == source_index:
                return
            index = self.src.get_manifest(self.src_repo, source_index)
            listed = {d.digest for d in copied}
            # Verbatim only if it lists what was copied: another writer (an environment
            # attaching its summary) may have added a referrer since they were listed.
            if current is None and {d.digest for d in index.children()} <= listed:
                self.dst.put_manifest(self.dst_repo, tag, index.data, index.media_type)
                self.result.tags.append(tag)
                return
        existing = self.dst.get_manifest(self.dst_repo, tag).children() if current else []
        known = {d.digest for d in existing}
        merged = existing + [d for d in copied if d.digest not in known]
        if current is not None and len(merged) == len(existing):
            return
        self.dst.put_manifest(self.dst_repo, tag, build_index(merged))
        self.result.tags.append(tag)


def _layer_key(layer: object) -> str:
    """A layer's identity: its digest and its annotations (the signature itself)."""
    if not isinstance(layer, dict):
        return json.dumps(layer, sort_keys=True)
    return json.dumps([layer.get("digest"), layer.get("annotations")], sort_keys=True)


def _where(registry: Registry, repo: str) -> str:
    """``host/repo``, or ``oci:/dir`` for a layout addressed by absolute path."""
    if registry.name.endswith(":") and repo.startswith("/"):
        return f"{registry.name}{repo}"
    return f"{registry.name}/{repo}"
