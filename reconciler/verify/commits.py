"""Commit signatures: an SSH signature by an allowed signer, checked as git checks it.

With ``settings.git.allowedSigners`` (an ``ssh-keygen -Y`` ALLOWED SIGNERS file) in
force, every commit that changes a file the desired state is built from must carry an
SSH signature (the ``gpgsig`` header git writes with ``gpg.format=ssh``) in namespace
``git`` by a key that file allows. Verification is ``ssh-keygen -Y verify``, the check
``git verify-commit`` runs, so what a person verifies locally is what the reconciler
verifies.

This module answers one question, who signed a commit; the policy in force
(:mod:`reconciler.verify.inforce`) decides which commits must be signed and by whom:
the signers of the last *judged* commit, never those of the change judged.

Fail closed: an unsigned commit, a GPG or X.509 signature, a bad signature, a key not in
the file (or not allowed in namespace ``git``), a commit that cannot be read, a missing
or failing ``ssh-keygen`` all raise :class:`Refused`; nothing returns False. Only
:func:`verify_commit` runs a subprocess, in a private temporary directory with a time
limit.
"""

from __future__ import annotations

import logging
import subprocess
import tempfile
from pathlib import Path

from reconciler.errors import GitSourceError
from reconciler.git.history import History
from reconciler.verify.errors import Refused, Rule

log = logging.getLogger(__name__)

RULE = Rule.COMMITS
NAMESPACE = "git"
SSH_KEYGEN_TIMEOUT_S = 30.0

_SSH_ARMOR = b"-----BEGIN SSH SIGNATURE-----"
_PGP_ARMOR = b"-----BEGIN PGP SIGNATURE-----"
_X509_ARMOR = b"-----BEGIN SIGNED MESSAGE-----"

_RULE_TEXT = (
    "settings.git.allowedSigners requires every commit that changes a file the desired "
    "state is built from to carry an SSH signature (namespace git) by an allowed signer"
)
_SIGN_HINT = (
    "sign commits with an SSH key listed in the allowed-signers file "
    "(git config gpg.format ssh; git config user.signingkey KEY.pub; git commit -S), "
    "then re-sign or revert the offending commit"
)
_INSTALL_HINT = (
    "install OpenSSH's ssh-keygen 8.2 or newer (Debian/Ubuntu: apt-get install "
    "openssh-client) and make it available on PATH"
)


def verify_commit(
    history: History,
    commit_id: str,
    allowed_signers: bytes,
    ssh_keygen: str = "ssh-keygen",
) -> str:
    """Return the principal whose SSH signature on the commit ``allowed_signers`` accepts.

    Like git: ``find-principals`` names the candidates for the signing key, then
    ``verify -I principal -n git`` checks the signature over the exact signed bytes (the
    commit object without its ``gpgsig`` header) and the file's ``namespaces=`` and
    validity options, at the current time.
    """
    try:
        label = history.commit(commit_id).label
        signature, payload = history.signature(commit_id)
    except GitSourceError as exc:
        raise Refused(RULE, exc.message, exc.hint) from None
    if not has_signers(allowed_signers):
        raise Refused(
            RULE,
            "the allowed-signers file in force lists no signers",
            'add lines like `alice@example.org namespaces="git" ssh-ed25519 AAAA...` in a '
            "commit signed by an allowed signer",
        )
    if signature is None or payload is None:
        raise Refused(RULE, f"{label} is not signed; {_RULE_TEXT}", _SIGN_HINT)
    signature = bytes(signature)
    if not signature.lstrip().startswith(_SSH_ARMOR):
        kind = (
            "an OpenPGP (GPG) signature"
            if signature.lstrip().startswith(_PGP_ARMOR)
            else "an X.509 signature"
            if signature.lstrip().startswith(_X509_ARMOR)
            else "a signature of unknown format"
        )
        raise Refused(RULE, f"{label} carries {kind}, not an SSH one; {_RULE_TEXT}", _SIGN_HINT)

    with tempfile.TemporaryDirectory(prefix="reconciler-sshsig-") as tmp:
        allowed = Path(tmp) / "allowed_signers"
        sigfile = Path(tmp) / "commit.sig"
        allowed.write_bytes(allowed_signers)
        sigfile.write_bytes(signature)

        found = _ssh_keygen(
            ssh_keygen, ["-Y", "find-principals", "-f", str(allowed), "-s", str(sigfile)], b""
        )
        principals = [p.strip() for p in found.stdout.decode("utf-8", "replace").splitlines()]
        principals = [p for p in principals if p]
        if found.returncode != 0 or not principals:
            raise Refused(
                RULE,
                f"{label} is signed by a key that is not in the allowed-signers file"
                f"{_detail(found.stderr)}; {_RULE_TEXT}",
                "add the signer's public key to the allowed-signers file (in a commit signed "
                "by an already-allowed signer), or re-sign the commit with an allowed key",
            )

        failures: list[str] = []
        for principal in principals:
            args = ["-Y", "verify", "-f", str(allowed), "-I", principal, "-n", NAMESPACE]
            checked = _ssh_keygen(ssh_keygen, [*args, "-s", str(sigfile)], bytes(payload))
            if checked.returncode == 0:
                log.debug("%s signed by %s", label, principal)
                return principal
            failures.append(f"{principal}{_detail(checked.stderr)}")

    raise Refused(
        RULE,
        f"{label}: the SSH signature does not verify for any allowed signer "
        f"({'; '.join(failures)}); {_RULE_TEXT}",
        "the commit was changed after signing, signed in another namespace than git, or "
        "the key is not allowed for namespace git (namespaces=) or at this time "
        "(valid-after/valid-before); re-sign it with an allowed key",
    )


def has_signers(allowed_signers: bytes) -> bool:
    """The allowed-signers text lists anyone (an empty file would accept no signature at all)."""
    lines = allowed_signers.decode("utf-8", "replace").splitlines()
    return any(line.strip() and not line.lstrip().startswith("#") for line in lines)


def _ssh_keygen(exe: str, args: list[str], stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    """Run ssh-keygen; a missing, unrunnable or hung one is a refusal, never a crash."""
    try:
        return subprocess.run(
            [exe, *args],
            input=stdin,
            capture_output=True,
            timeout=SSH_KEYGEN_TIMEOUT_S,
            check=False,
        )
    except OSError as exc:
        raise Refused(
            RULE,
            f"cannot run {exe!r} to verify commit signatures ({exc.strerror or exc})",
            _INSTALL_HINT,
        ) from None
    except subprocess.TimeoutExpired:
        raise Refused(
            RULE,
            f"{exe!r} did not finish verifying a commit signature within "
            f"{SSH_KEYGEN_TIMEOUT_S:.0f} s",
            "check that ssh-keygen is a working OpenSSH ssh-keygen",
        ) from None


def _detail(stderr: bytes) -> str:
    """The last line ssh-keygen printed, made safe to show: why it said no."""
    lines = [ln.strip() for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    if not lines:
        return ""
    text = "".join(ch if ch.isprintable() else "?" for ch in lines[-1])[:200]
    return f" ({text})"
