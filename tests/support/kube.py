"""A real Kubernetes API server (kube-apiserver on etcd, both from scripts/build-kube.sh)
on 127.0.0.1, with a token file and RBAC, for the Lease election tests.

The admin token is the tests' own; the daemons get a kubeconfig for the user
``reconciler``, who may do only what examples/kubernetes/rbac.yaml's Role allows.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support.registry_servers import free_port
from tests.support.staterepo import ROOT

BIN = ROOT / ".tools" / "bin"
NAMESPACE = "reconciler"
USER = "reconciler"

# kind -> (API path prefix, plural): what the examples hold.
RESOURCES = {
    "ServiceAccount": ("/api/v1", "serviceaccounts"),
    "Secret": ("/api/v1", "secrets"),
    "ConfigMap": ("/api/v1", "configmaps"),
    "Service": ("/api/v1", "services"),
    "Role": ("/apis/rbac.authorization.k8s.io/v1", "roles"),
    "RoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "rolebindings"),
    "StatefulSet": ("/apis/apps/v1", "statefulsets"),
    "Lease": ("/apis/coordination.k8s.io/v1", "leases"),
}


def tool(name: str) -> str:
    path = BIN / name
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} is missing: run `make peers` (scripts/build-kube.sh builds it)")
    return str(path)


class KubeCluster:
    """etcd and kube-apiserver in ``root``; :meth:`stop_apiserver` / :meth:`start_apiserver`
    take the API away and bring it back on the same port, certificates and data."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.admin_token = secrets.token_hex(16)
        self.user_token = secrets.token_hex(16)
        self.etcd_port, self.etcd_peer, self.port = free_port(), free_port(), free_port()
        self.server = f"https://127.0.0.1:{self.port}"
        self.ca = root / "certs" / "apiserver.crt"
        (root / "tokens.csv").write_text(
            f'{self.admin_token},admin,admin-uid,"system:masters"\n'
            f"{self.user_token},{USER},{USER}-uid\n"
        )
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        (root / "sa.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
        self.etcd: subprocess.Popen[bytes] | None = None
        self.apiserver: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with (self.root / "etcd.log").open("ab") as out:
            self.etcd = subprocess.Popen(
                [
                    tool("etcd"),
                    "--data-dir", str(self.root / "etcd"),
                    "--listen-client-urls", f"http://127.0.0.1:{self.etcd_port}",
                    "--advertise-client-urls", f"http://127.0.0.1:{self.etcd_port}",
                    "--listen-peer-urls", f"http://127.0.0.1:{self.etcd_peer}",
                    "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.etcd_peer}",
                    "--initial-cluster", f"default=http://127.0.0.1:{self.etcd_peer}",
                ],
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.start_apiserver()
        self.setup_namespace()

    def start_apiserver(self) -> None:
        root = self.root
        with (root / "apiserver.log").open("ab") as out:
            self.apiserver = subprocess.Popen(
                [
                    tool("kube-apiserver"),
                    f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
                    "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
                    f"--secure-port={self.port}", f"--cert-dir={root / 'certs'}",
                    f"--token-auth-file={root / 'tokens.csv'}",
                    "--authorization-mode=RBAC", "--anonymous-auth=false",
                    "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                    f"--service-account-key-file={root / 'sa.key'}",
                    f"--service-account-signing-key-file={root / 'sa.key'}",
                    "--service-cluster-ip-range=10.0.0.0/24",
                    "--endpoint-reconciler-type=none", "--enable-priority-and-fairness=false",
                ],
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert self.apiserver.poll() is None, self.log_tail()
            try:
                if self.ca.exists() and self.get("/readyz").text == "ok":
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        pytest.fail(f"kube-apiserver not ready within 90 s\n{self.log_tail()}")

    def stop_apiserver(self) -> None:
        """The API server goes away (etcd stays, as its data)."""
        if self.apiserver is not None and self.apiserver.poll() is None:
            self.apiserver.send_signal(signal.SIGTERM)
            try:
                self.apiserver.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.apiserver.kill()
                self.apiserver.wait()
        self.apiserver = None

    def stop(self) -> None:
        """The API server before etcd: together, its shutdown hangs retrying etcd."""
        self.stop_apiserver()
        if self.etcd is not None and self.etcd.poll() is None:
            self.etcd.terminate()
            try:
                self.etcd.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.etcd.kill()
                self.etcd.wait()

    def log_tail(self) -> str:
        path = self.root / "apiserver.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    # -- the API, as the admin

    def request(self, method: str, path: str, body: object = None) -> requests.Response:
        return requests.request(
            method, self.server + path, json=body, verify=str(self.ca), timeout=10,
            headers={"Authorization": f"Bearer {self.admin_token}"},
        )  # fmt: skip

    def get(self, path: str) -> requests.Response:
        return self.request("GET", path)

    def create(self, doc: dict[str, Any], *, dry_run: bool = False) -> requests.Response:
        """POST ``doc`` into the namespace (``dryRun=All``: admitted and validated, not stored)."""
        prefix, plural = RESOURCES[doc["kind"]]
        path = f"{prefix}/namespaces/{NAMESPACE}/{plural}" + ("?dryRun=All" if dry_run else "")
        return self.request("POST", path, doc)

    def setup_namespace(self) -> None:
        """The namespace, and the examples' Role bound to the daemons' user."""
        if self.get(f"/api/v1/namespaces/{NAMESPACE}").status_code == 200:
            return
        ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
        assert self.request("POST", "/api/v1/namespaces", ns).status_code == 201
        rbac = ROOT / "examples" / "kubernetes" / "rbac.yaml"
        role = next(d for d in yaml.safe_load_all(rbac.read_text()) if d and d["kind"] == "Role")
        role = {**role, "metadata": {"name": "reconciler-test"}}  # the example's stays free
        created = self.create(role)
        assert created.status_code == 201, created.text
        binding = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "reconciler-test-user"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": role["metadata"]["name"],
            },
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": USER}],
        }
        created = self.create(binding)
        assert created.status_code == 201, created.text

    def lease(self, name: str) -> dict[str, Any] | None:
        found = self.get(f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases/{name}")
        return found.json() if found.status_code == 200 else None

    def kubeconfig(self, path: Path) -> Path:
        """A kubeconfig for the user ``reconciler`` (the examples' Role, nothing more)."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "test",
                    "cluster": {"server": self.server, "certificate-authority": str(self.ca)},
                }
            ],
            "users": [{"name": USER, "user": {"token": self.user_token}}],
            "contexts": [
                {
                    "name": "test",
                    "context": {"cluster": "test", "user": USER, "namespace": NAMESPACE},
                }
            ],
            "current-context": "test",
        }
        path.write_text(json.dumps(config))
        return path
