"""A real Gitea for tests: started on 127.0.0.1 with a throwaway SQLite database, two users
(alice, an admin who owns the state repository, and bob, who reviews and merges) and a
token each. Built once by scripts/build-gitea.sh (``make peers``) into .tools/bin."""

from __future__ import annotations

import base64
import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.registry_servers import free_port
from tests.support.staterepo import ROOT

BINARY = ROOT / ".tools" / "bin" / "gitea"
SOURCE = ROOT / ".tools" / "gitea-src"  # templates and options, read at run time
PASSWORD = "a-long-test-password-1"
USERS = ("alice", "bob")


@dataclass
class GiteaServer:
    """One running Gitea; ``tokens[user]`` may do everything that user may."""

    base: str
    work: Path
    proc: subprocess.Popen[bytes]
    tokens: dict[str, str] = field(default_factory=dict)

    def api(self, user: str, method: str, path: str, body: Any = None, ok: bool = True) -> Any:
        response = requests.request(
            method,
            f"{self.base}/api/v1{path}",
            json=body,
            headers={"Authorization": f"token {self.tokens[user]}"},
            timeout=30,
        )
        if ok:
            assert response.status_code < 300, (
                f"{method} {path}: {response.status_code} {response.text}"
            )
        return response.json() if response.content.strip() else None

    def create_repo(self, name: str, owner: str = "alice", reviewer: str = "bob") -> str:
        """A public repository of ``owner``, ``reviewer`` a collaborator with write; its
        clone URL without credentials."""
        self.api(
            owner, "POST", "/user/repos", {"name": name, "private": False, "default_branch": "main"}
        )
        self.api(
            owner, "PUT", f"/repos/{owner}/{name}/collaborators/{reviewer}", {"permission": "write"}
        )
        return f"{self.base}/{owner}/{name}.git"

    def push_url(self, clone_url: str, user: str = "alice") -> str:
        return clone_url.replace("http://", f"http://{user}:{self.tokens[user]}@", 1)

    def wait_for_branch(self, repo: str, branch: str, commit: str) -> None:
        """Gitea processes pushes in the background: until the branch shows the commit."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            found = self.api("alice", "GET", f"/repos/{repo}/branches/{branch}", ok=False)
            if found and (found.get("commit") or {}).get("id") == commit:
                return
            time.sleep(0.1)
        pytest.fail(f"gitea does not show {repo} {branch} at {commit[:12]}")

    def merge(self, repo: str, number: int, user: str = "bob") -> str:
        """Merge (a merge commit) as ``user``: Gitea checks mergeability in the background and
        answers 405 "try again later" meanwhile. The merge commit."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            response = requests.post(
                f"{self.base}/api/v1/repos/{repo}/pulls/{number}/merge",
                json={"Do": "merge"},
                headers={"Authorization": f"token {self.tokens[user]}"},
                timeout=30,
            )
            if response.status_code < 300:
                return str(
                    self.api("alice", "GET", f"/repos/{repo}/pulls/{number}")["merge_commit_sha"]
                )
            assert response.status_code == 405, f"merge: {response.status_code} {response.text}"
            time.sleep(0.2)
        pytest.fail(f"gitea did not merge {repo}#{number} within 30 s")

    def log(self) -> str:
        path = self.work / "log" / "gitea.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""


def _gitea(work: Path, *args: str) -> str:
    env = {**os.environ, "GITEA_WORK_DIR": str(work), "HOME": str(work)}
    if os.geteuid() == 0:
        env["GITEA_I_AM_BEING_UNSAFE_RUNNING_AS_ROOT"] = "true"
    proc = subprocess.run(
        [str(BINARY), "--config", str(work / "app.ini"), "--work-path", str(work), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"gitea {' '.join(args[:3])}: {proc.stdout}{proc.stderr}"
    return proc.stdout.strip()


def _app_ini(work: Path, port: int) -> str:
    user = (
        os.environ.get("USER")
        or subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()
    )
    jwt = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    return f"""APP_NAME = reconciler tests
RUN_MODE = prod
RUN_USER = {user}
WORK_PATH = {work}

[database]
DB_TYPE = sqlite3
PATH = {work}/gitea.db

[repository]
ROOT = {work}/repositories
DEFAULT_BRANCH = main

[server]
PROTOCOL = http
HTTP_ADDR = 127.0.0.1
HTTP_PORT = {port}
ROOT_URL = http://127.0.0.1:{port}/
DISABLE_SSH = true
OFFLINE_MODE = true
LFS_START_SERVER = false
STATIC_ROOT_PATH = {SOURCE}
APP_DATA_PATH = {work}/data

[security]
INSTALL_LOCK = true
SECRET_KEY = {secrets.token_hex(32)}
INTERNAL_TOKEN = {secrets.token_hex(40)}
ALLOWED_HOST_LIST = loopback,external

[oauth2]
JWT_SECRET = {jwt}

[webhook]
ALLOWED_HOST_LIST = loopback,external
DELIVER_TIMEOUT = 10

[service]
DISABLE_REGISTRATION = true

[mailer]
ENABLED = false

[log]
MODE = file
LEVEL = Warn
ROOT_PATH = {work}/log
"""


def start_gitea(work: Path) -> GiteaServer:
    """Gitea on a free port of 127.0.0.1 with alice and bob; a missing build fails."""
    if not BINARY.exists() or not (SOURCE / "templates").is_dir():
        pytest.fail(f"no gitea at {BINARY}: run scripts/build-gitea.sh (make peers)")
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    (work / "app.ini").write_text(_app_ini(work, port))
    _gitea(work, "migrate")
    tokens = {}
    for i, user in enumerate(USERS):
        admin = ["--admin"] if i == 0 else []
        _gitea(
            work, "admin", "user", "create", *admin, "--username", user, "--password", PASSWORD,
            "--email", f"{user}@example.org", "--must-change-password=false",
        )  # fmt: skip
        tokens[user] = _gitea(
            work, "admin", "user", "generate-access-token", "--username", user,
            "--token-name", "tests", "--scopes", "all", "--raw",
        ).splitlines()[-1]  # fmt: skip
    env = {**os.environ, "GITEA_WORK_DIR": str(work), "HOME": str(work)}
    if os.geteuid() == 0:
        env["GITEA_I_AM_BEING_UNSAFE_RUNNING_AS_ROOT"] = "true"
    out = (work / "stdout.log").open("wb")
    proc = subprocess.Popen(
        [str(BINARY), "--config", str(work / "app.ini"), "--work-path", str(work), "web"],
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    out.close()
    server = GiteaServer(f"http://127.0.0.1:{port}", work, proc, tokens)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(
                f"gitea exited {proc.returncode}: {(work / 'stdout.log').read_text()[-3000:]}"
            )
        try:
            if requests.get(f"{server.base}/api/v1/version", timeout=1).status_code == 200:
                return server
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    proc.kill()
    pytest.fail("gitea did not answer /api/v1/version within 60 s")


@pytest.fixture(scope="session")
def gitea(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GiteaServer]:
    """One Gitea for the session; each test makes its own repositories."""
    server = start_gitea(tmp_path_factory.mktemp("gitea"))
    yield server
    server.proc.terminate()
    try:
        server.proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()
