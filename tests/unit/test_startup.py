"""What a command pays before it starts: heavy modules load only when used. A process's
start is a third of a no-op `apply` at 1,000 tags."""

from __future__ import annotations

import json
import subprocess
import sys

# Each is imported when needed: a token service, a proxy or another origin (requests); a
# document not schema-checked before (jsonschema); a proposal, a forge, the daemon.
LAZY = (
    "requests",
    "urllib3",
    "jsonschema",
    "reconciler.proposals.workflows",
    "reconciler.forge.base",
    "reconciler.daemon.service",
    "kubernetes",
    "sigstore.verify",  # a keyless signature to check
)


def imported_by(statement: str) -> set[str]:
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return set(json.loads(proc.stdout))


def test_the_command_line_starts_without_the_libraries_of_other_commands() -> None:
    loaded = imported_by("import reconciler.cli.main")
    assert "reconciler.engine.reconcile" in loaded  # the control: apply's own code is there
    assert sorted(loaded & set(LAZY)) == []


def test_a_registry_client_imports_requests_only_for_a_proxy() -> None:
    statement = (
        "import os\n"
        "from reconciler.registry import HostConfig, HttpRegistry\n"
        "from reconciler.registry.transport import Transport\n"
        "client = HttpRegistry('127.0.0.1:9', HostConfig(plain_http=True))\n"
        "t = client._t\n"
        "os.environ.pop('HTTPS_PROXY', None); os.environ.pop('https_proxy', None)\n"
        "assert t._proxies_for(t.url('/v2/')) == {}\n"
        "assert 'requests' not in sys.modules\n"
        "os.environ['HTTPS_PROXY'] = 'http://127.0.0.1:3128'\n"
        "t._proxies.clear()\n"
        "print(t._proxies_for('https://example.org/v2/'), file=sys.stderr)\n"
    )
    assert "requests" in imported_by(statement)
