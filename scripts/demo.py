"""`make demo`: the whole loop on the embedded default, no server needed.

An OCI image layout under a temporary directory plays the registry. The demo publishes
sample artifacts, signs them with a freshly generated cosign-style key, writes the
catalog as a release pipeline would, then drives the state repository the way a
platform team does: promote dev -> staging -> prod by merge request, apply, show
status, roll prod back with `rollback`, apply, and print the audit trail.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pygit2
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from reconciler.evidence import records
from reconciler.evidence.signing import new_signing_key
from reconciler.registry import OCI_INDEX, OCI_MANIFEST, LayoutRegistry, referrers_tag

ROOT = Path(__file__).resolve().parents[1]
RELEASES = ("v1.0", "v1.1", "v1.2")
WHO = ("Dana Developer", "dana@example.org")
REVIEWER = ("Riley Reviewer", "riley@example.org")


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def put(
    store: LayoutRegistry, repo: str, data: bytes, media_type: str, ref: str | None = None
) -> str:
    store.put_manifest(repo, ref or sha(data), data, media_type)
    return sha(data)


def blob(store: LayoutRegistry, repo: str, data: bytes, media_type: str) -> dict[str, object]:
    store.put_blob(repo, sha(data), len(data), [data])
    return {"mediaType": media_type, "digest": sha(data), "size": len(data)}


def image(store: LayoutRegistry, repo: str, name: str, arch: str = "amd64") -> bytes:
    config = json.dumps({"architecture": arch, "os": "linux", "config": {"Labels": {"app": name}}})
    layer = hashlib.sha256(name.encode()).digest() * 64
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": blob(store, repo, config.encode(), "application/vnd.oci.image.config.v1+json"),
        "layers": [blob(store, repo, layer, "application/vnd.oci.image.layer.v1.tar+gzip")],
        "annotations": {"org.opencontainers.image.title": name},
    }
    return json.dumps(doc, indent=2).encode()


def publish(
    store: LayoutRegistry, repo: str, key: ec.EllipticCurvePrivateKey
) -> dict[str, dict[str, str]]:
    """Push web (a two-platform index) and worker (an image) for each release; sign them."""
    digests: dict[str, dict[str, str]] = {}
    for release in RELEASES:
        children = []
        for arch in ("amd64", "arm64"):
            data = image(store, repo, f"web {release} {arch}", arch)
            put(store, repo, data, OCI_MANIFEST)
            children.append(
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": sha(data),
                    "size": len(data),
                    "platform": {"os": "linux", "architecture": arch},
                }
            )
        web = json.dumps(
            {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children}
        ).encode()
        worker = image(store, repo, f"worker {release}")
        digests[release] = {
            "web": put(store, repo, web, OCI_INDEX),
            "worker": put(store, repo, worker, OCI_MANIFEST),
        }
        for digest in digests[release].values():
            sign(store, repo, digest, key)
    return digests


def sign(store: LayoutRegistry, repo: str, digest: str, key: ec.EllipticCurvePrivateKey) -> None:
    """A cosign simple-signing signature under the `sha256-<hex>.sig` tag."""
    payload = json.dumps(
        {
            "critical": {
                "identity": {"docker-reference": "acme/shop"},
                "image": {"docker-manifest-digest": digest},
                "type": "cosign container image signature",
            },
            "optional": None,
        }
    ).encode()
    signature = base64.b64encode(key.sign(payload, ec.ECDSA(hashes.SHA256()))).decode()
    layer = blob(store, repo, payload, "application/vnd.dev.cosign.simplesigning.v1+json")
    layer["annotations"] = {"dev.cosignproject.cosign/signature": signature}
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": blob(store, repo, b"{}", "application/vnd.oci.image.config.v1+json"),
        "layers": [layer],
    }
    put(store, repo, json.dumps(doc).encode(), OCI_MANIFEST, referrers_tag(digest) + ".sig")


def catalog(source: str, digests: dict[str, dict[str, str]]) -> dict[str, object]:
    """The shop's catalog as a release pipeline writes it: newest release first."""
    hazards = {"v1.0": {"CVE-2026-1234": "session fixation in web; fixed in v1.1"}}
    releases = [
        {"name": r, "items": digests[r], **({"hazards": hazards[r]} if r in hazards else {})}
        for r in reversed(RELEASES)
    ]
    return {
        "name": "example.org/acme/shop",
        "source": source,
        "signers": {"keys": ["keys/cosign.pub"]},
        "releases": releases,
    }


# The environments of examples/quickstart, all on v1.1. The demo writes its state as JSON,
# which the reconciler reads without `cue` (so `make demo` needs no Go build); CUE states
# work the same way and are what examples/quickstart shows.
ENVIRONMENTS: dict[str, dict[str, object]] = {
    "dev": {"catalog": "example.org/acme/shop", "release": "v1.1"},
    "staging": {"catalog": "example.org/acme/shop", "release": "v1.1", "requires": ["dev"]},
    "prod": {
        "catalog": "example.org/acme/shop",
        "release": "v1.1",
        "items": ["web", "worker"],
        "requires": ["staging"],
        "target": {"tag": "prod-{item}"},
        "prune": True,
    },
}


def write_json(path: Path, value: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2) + "\n")


class Demo:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.origin = work / "origin.git"
        self.env = {
            **os.environ,
            "RECONCILER_CACHE_DIR": str(work / "cache"),
            "GIT_AUTHOR_NAME": "Dana Developer",
            "GIT_AUTHOR_EMAIL": "dana@example.org",
        }

    def step(self, title: str) -> None:
        bold, plain = ("\033[1m", "\033[0m") if sys.stdout.isatty() else ("", "")
        print(f"\n{bold}== {title}{plain}", flush=True)

    def run(self, *args: str, ok: tuple[int, ...] = (0,), repo: bool = True) -> str:
        shown = " ".join(args)
        print(f"$ reconciler {shown}", flush=True)
        where = ["--repo", f"file://{self.origin}"] if repo else []
        proc = subprocess.run(
            [sys.executable, "-m", "reconciler", *args, *where],
            env=self.env,
            capture_output=True,
            text=True,
        )
        out = (
            proc.stdout
            + "".join(f"{line}\n" for line in proc.stderr.splitlines() if "WARNING" not in line)
        ).rstrip()
        print("   " + out.replace("\n", "\n   ") if out else "", flush=True)
        if proc.returncode not in ok:
            sys.exit(f"demo: `reconciler {shown}` exited {proc.returncode}")
        return proc.stdout

    def merge(self, branch: str) -> None:
        """What the merge button does: a merge commit on main naming the merge request."""
        repo = pygit2.Repository(str(self.origin))
        main = repo.references["refs/heads/main"]
        head = repo.references[f"refs/heads/{branch}"].peel(pygit2.Commit)
        self.mr = getattr(self, "mr", 0) + 1
        message = f"Merge branch '{branch}' into 'main'\n\nSee merge request acme/state!{self.mr}\n"
        reviewer = pygit2.Signature(*REVIEWER)
        repo.create_commit(
            "refs/heads/main", reviewer, reviewer, message, head.tree.id, [main.target, head.id]
        )
        print(
            f"   ({branch} merged with git as {reviewer.name}, for merge request !{self.mr}: "
            "this demo has no forge; with settings.forge, --open opens a real one)",
            flush=True,
        )


def forge_record(store: LayoutRegistry, repo: str, env: str) -> str:
    """What an attacker with push to the registry can do: a record of their own."""
    head = records.read_head(store, repo, env)
    assert head is not None
    attacker = new_signing_key()
    fake = replace(head, release="v1.2", previous=head.digest, note="forged")
    return records.write(store, repo, fake, head.digest, attacker)


def main() -> int:
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="reconciler-demo-"))
    try:
        demo = Demo(work)
        demo.step("Publish sample artifacts into an OCI layout and sign them")
        store = LayoutRegistry(None)
        source = work / "registry" / "acme" / "shop"
        key = ec.generate_private_key(ec.SECP256R1())
        digests = publish(store, str(source), key)
        for release, items in digests.items():
            print(f"   {release}: " + ", ".join(f"{i} {d[:19]}" for i, d in items.items()))
        print(f"   signed with a new cosign key; registry: oci:{source}")

        demo.step("A state repository (examples/quickstart, as JSON) on a bare remote")
        state = work / "state"
        (state / "keys").mkdir(parents=True)
        pem = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        (state / "keys" / "cosign.pub").write_bytes(pem)
        write_json(state / "catalogs" / "shop.json", catalog(f"oci:{source}", digests))
        record_key, root = work / "records.key", work / "trust-root.json"
        # The trust root lives outside the repository it judges: every host gets it.
        demo.run("keygen", str(record_key), "--write-trust-root", str(root), repo=False)
        demo.env["RECONCILER_RECORD_KEY"] = str(record_key)
        demo.env["RECONCILER_TRUST_ROOT"] = str(root)
        shutil.copy(work / "records.key.pub", state / "keys" / "records.pub")
        # Apply records count only when signed by keys/records.pub.
        settings = {
            "verify": {"keys": ["keys/cosign.pub"]},
            "records": {"keys": ["keys/records.pub"]},
        }
        write_json(state / "reconciler.json", settings)
        for env, spec in ENVIRONMENTS.items():
            write_json(state / "environments" / f"{env}.json", spec)
        repo = pygit2.init_repository(str(state), initial_head="main")
        repo.index.add_all()
        repo.index.write()
        who = pygit2.Signature(*WHO)
        repo.create_commit(
            "refs/heads/main",
            who,
            who,
            "Start the shop's state repository",
            repo.index.write_tree(),
            [],
        )
        pygit2.clone_repository(str(state), str(demo.origin), bare=True)
        print(f"   origin: file://{demo.origin}")

        demo.step("Apply: every environment converges to v1.1, verified")
        demo.run("apply")
        for env in ("dev", "staging", "prod"):
            demo.step(f"Promote {env} to v1.2 by merge request, then apply")
            demo.run("promote", env, "v1.2", "--push")
            demo.merge(f"promote/{env}/v1.2")
            demo.run("apply", "--env", env)
        demo.step("Status")
        demo.run("status")
        demo.step("Roll prod back (git revert by merge request), then apply")
        demo.run("rollback", "prod", "--push")
        branch = next(
            r
            for r in pygit2.Repository(str(demo.origin)).references
            if r.startswith("refs/heads/rollback/prod/")
        )
        demo.merge(branch.removeprefix("refs/heads/"))
        demo.run("apply", "--env", "prod")
        demo.step("A promotion the reconciler refuses: v1.0 has hazards")
        demo.run("promote", "dev", "v1.0", "--push", ok=(1,))
        demo.step("Audit: who promoted what, when, and how it was verified")
        demo.run("audit", "--env", "prod")
        demo.step("Someone with registry push forges prod's apply record: refused")
        forged = forge_record(store, str(source), "prod")
        print(f"   wrote a record claiming v1.2, signed by an unknown key: {forged[:19]}")
        demo.run("apply", "--env", "prod", ok=(1,))
        demo.run("audit", "--env", "prod")
        print(f"\ndemo finished in {time.perf_counter() - started:.1f} s")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
