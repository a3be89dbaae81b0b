"""Desired state: one commit of the state repository -> a validated, frozen DesiredState.

Steps, each stopping at the first stage that finds problems (but reporting every
problem of that stage): read the files (size limit, strict UTF-8) -> evaluate every
``.cue`` file together with the schema in ONE ``cue export`` call and parse ``.json``
files directly -> JSON Schema on the merged document -> cross-checks -> model.

The ``cue`` output is cached by the tree id of the state directory (in memory and on
disk), so an unchanged commit costs no ``cue`` call. Everything after ``cue`` is
cheap and re-run every time, so a cached result can never skip a check.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

import jsonschema

from reconciler import __version__
from reconciler.errors import InvalidState, Problem, Stalled, ToolMissing
from reconciler.git import Snapshot
from reconciler.model import (
    DEFAULT_TAG_TEMPLATE,
    NAME_RE,
    RECORD_TAG_PREFIX,
    TAG_RE,
    Catalog,
    DesiredState,
    DesiredTag,
    Environment,
    Identity,
    ItemRef,
    Policy,
    PublicKey,
    RegistrySettings,
    Release,
    Settings,
    expand_tag,
    frozen_map,
)

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 1 << 20  # a state file over 1 MiB is a mistake, not a catalog
CUE_TIMEOUT_S = 120
SETTINGS_STEM = "reconciler"
CATALOGS, ENVIRONMENTS = "catalogs", "environments"
_SCHEMA_NAME = "__reconciler_schema__/reconciler.cue"
_PACKAGE_RE = re.compile(r"^\s*package\s+([A-Za-z_#][\w]*)", re.MULTILINE)
_DISJUNCTION = re.compile(r"^\d+ errors in empty disjunction")
_CUE_POS = re.compile(r"^\s+(\./)?(?P<file>[^:\s]+\.cue):(?P<line>\d+):(?P<col>\d+)\s*$")


def schema_dir() -> Path:
    """The schemas shipped in the wheel, or those of the source tree (editable installs)."""
    packaged = Path(__file__).parent / "schemas"
    return packaged if packaged.is_dir() else Path(__file__).parent.parent / "schemas"


@cache
def _schema_texts() -> tuple[str, dict[str, Any]]:
    d = schema_dir()
    cue_text = (d / "reconciler.cue").read_text(encoding="utf-8")
    json_schema = json.loads((d / "reconciler.schema.json").read_text(encoding="utf-8"))
    return cue_text, json_schema


def cue_command() -> str:
    return os.environ.get("RECONCILER_CUE") or "cue"


# --------------------------------------------------------------------------- files


@dataclass
class _Files:
    """The state files of one snapshot, decoded; ``problems`` collects what was wrong."""

    cue: dict[str, str] = field(default_factory=dict)
    json: dict[str, str] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)


def _read_state_files(snap: Snapshot) -> _Files:
    out = _Files()
    candidates: list[tuple[str, int]] = []
    for directory in ("", CATALOGS, ENVIRONMENTS):
        for path, size in snap.files(directory):
            if path.endswith(".cue") or (
                path.endswith(".json") and (directory or path == f"{SETTINGS_STEM}.json")
            ):
                candidates.append((path, size))
    for path, size in sorted(candidates):
        name = snap.display(path)
        if size > MAX_FILE_BYTES:
            out.problems.append(
                Problem(
                    name,
                    "",
                    f"file is {size:,} bytes, "
                    f"over the {MAX_FILE_BYTES:,}-byte limit for a state file",
                    "split it into several catalog or environment files",
                )
            )
            continue
        data = snap.read(path)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            out.problems.append(
                Problem(
                    name,
                    "",
                    f"not UTF-8: byte 0x{data[exc.start]:02x} at offset {exc.start}",
                    "save the file as UTF-8",
                    line=line,
                )
            )
            continue
        (out.cue if path.endswith(".cue") else out.json)[path] = text
    return out


# --------------------------------------------------------------------------- cue


class CueCache:
    """``cue export`` results by key, in memory and as files under ``directory``."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory / "desired" if directory else None
        self._memory: dict[str, dict[str, Any]] = {}

    def get(self, key: str) -> dict[str, Any] | None:
        if key in self._memory:
            return self._memory[key]
        if self.directory is None:
            return None
        path = self.directory / f"{key}.json"
        try:
            value: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        self._memory[key] = value
        return value

    def put(self, key: str, value: dict[str, Any]) -> None:
        self._memory[key] = value
        if self.directory is None:
            return
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(value, fh)
            os.replace(tmp, self.directory / f"{key}.json")
        except OSError as exc:  # a cache that cannot be written only costs speed
            log.warning("cannot write the desired-state cache: %s", exc)


def _cache_key(tree_id: str, cue_files: Mapping[str, str]) -> str:
    cue_schema, _ = _schema_texts()
    h = hashlib.sha256()
    for part in (__version__, tree_id, cue_schema, "\0".join(sorted(cue_files))):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def _evaluate_cue(snap: Snapshot, files: Mapping[str, str]) -> dict[str, Any]:
    """Run ONE ``cue export`` over the user's files and the schema; raise InvalidState."""
    cue_schema, _ = _schema_texts()
    packages = {m.group(1) for text in files.values() if (m := _PACKAGE_RE.search(text))}
    if len(packages) == 1:  # speak the user's package name so cue sees one instance
        cue_schema = _PACKAGE_RE.sub(f"package {packages.pop()}", cue_schema, count=1)
    exe = cue_command()
    with tempfile.TemporaryDirectory(prefix="reconciler-cue-") as tmp:
        root = Path(tmp)
        for rel, text in [*files.items(), (_SCHEMA_NAME, cue_schema)]:
            target = root / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
        args = [exe, "export", "-E", "--out", "json", *sorted(files), _SCHEMA_NAME]
        log.debug("running %s on %d files", exe, len(files))
        try:
            proc = subprocess.run(
                args, cwd=root, capture_output=True, timeout=CUE_TIMEOUT_S, check=False
            )
        except FileNotFoundError:
            raise ToolMissing(
                f"the cue executable {exe!r} was not found",
                "install cue (https://cuelang.org) or set RECONCILER_CUE to its path; "
                "`make setup` installs one under .tools/bin",
            ) from None
        except subprocess.TimeoutExpired:
            raise Stalled(f"cue did not finish within {CUE_TIMEOUT_S} s") from None
    if proc.returncode != 0:
        stderr = proc.stderr.decode("utf-8", "replace")
        raise InvalidState(_cue_problems(snap, stderr, tmp))
    try:
        result: dict[str, Any] = json.loads(proc.stdout)
    except ValueError:
        raise Stalled(f"cue printed output that is not JSON: {proc.stdout[:200]!r}") from None
    return result


def _cue_problems(snap: Snapshot, stderr: str, workdir: str) -> list[Problem]:
    """Turn cue's error report into Problems, keeping its file:line of the user's file."""
    problems: list[Problem] = []
    message: str | None = None
    positions: list[tuple[str, int]] = []

    def flush() -> None:
        if message is None:
            return
        user = [p for p in positions if not p[0].startswith("__reconciler_schema__")]
        file, line = user[0] if user else (positions[0] if positions else ("", 0))
        shown = "schemas/reconciler.cue" if file.startswith("__reconciler") else snap.display(file)
        field_path, sep, text = message.partition(": ")
        if not sep or " " in field_path:
            field_path, text = "", message
        problems.append(
            Problem(
                shown or "(cue)",
                field_path,
                text.rstrip(":"),
                _cue_hint(text),
                line=line or None,
            )
        )

    for raw in stderr.replace(workdir, snap.location).splitlines():
        pos = _CUE_POS.match(raw)
        if pos:
            positions.append((pos.group("file"), int(pos.group("line"))))
        elif raw.strip():
            flush()
            message, positions = raw.strip(), []
    flush()
    # A failed disjunction reports a summary plus one error per branch: keep the first
    # branch's error per field, which names the value, the file and the line.
    seen: set[tuple[str, str]] = set()
    kept = []
    for p in problems:
        if _DISJUNCTION.search(p.message) or ((p.file, p.field) in seen and p.field):
            continue
        seen.add((p.file, p.field))
        kept.append(p)
    return kept or [Problem("(cue)", "", stderr.strip() or "cue failed without a message")]


def _cue_hint(message: str) -> str:
    if message.startswith("found packages"):
        return "use one package name in every .cue file, e.g. `package reconciler`"
    return "fix the value cue reports; the schema is schemas/reconciler.cue"


# --------------------------------------------------------------------------- json


def _json_problem(name: str, text: str, exc: json.JSONDecodeError) -> Problem:
    hint = "fix the JSON syntax"
    before = text[: exc.pos].rstrip()
    if text[exc.pos : exc.pos + 1] in "]}" and before.endswith(","):
        line = before.count("\n") + 1
        hint = f"JSON allows no trailing comma: remove the ',' at the end of line {line}"
    return Problem(
        name,
        "",
        f"invalid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})",
        hint,
        line=exc.lineno,
    )


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


class _DuplicateKey(ValueError):
    pass


def _parse_json(name: str, text: str, problems: list[Problem]) -> dict[str, Any] | None:
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as exc:
        problems.append(_json_problem(name, text, exc))
        return None
    except _DuplicateKey as exc:
        problems.append(
            Problem(
                name,
                str(exc),
                "key appears twice in one object",
                "keep one of them",
                line=_line_of(text, str(exc)),
            )
        )
        return None
    if not isinstance(value, dict):
        problems.append(Problem(name, "", f"expected a JSON object, found {type(value).__name__}"))
        return None
    return value


# --------------------------------------------------------------------------- merge


@dataclass
class _Sources:
    """Which file each part of the merged document came from, for messages."""

    snap: Snapshot
    cue: Mapping[str, str]
    json: Mapping[str, str]
    owner: dict[tuple[str, ...], str] = field(default_factory=dict)

    def locate(self, path: tuple[Any, ...]) -> tuple[str, int | None]:
        """(file shown to the user, line) for a field path of the merged document."""
        key = tuple(str(p) for p in path[:2])
        if key and key[0] == "settings":
            key = ("settings",)
        rel = self.owner.get(key)
        if rel is None:
            rel = self._find_cue(key)
        if rel is None:
            return "(state)", None
        text = self.cue.get(rel) or self.json.get(rel) or ""
        needle = next((str(p) for p in reversed(path) if isinstance(p, str)), "")
        return self.snap.display(rel), _line_of(text, needle) if needle else None

    def _find_cue(self, key: tuple[str, ...]) -> str | None:
        if not key:
            return None
        if len(key) == 2 and key[0] == ENVIRONMENTS and f"{ENVIRONMENTS}/{key[1]}.cue" in self.cue:
            return f"{ENVIRONMENTS}/{key[1]}.cue"
        name = key[-1]
        pattern = re.compile(rf'(^|[\s{{,])("{re.escape(name)}"|{re.escape(name)})\s*:', re.M)
        for rel in sorted(self.cue, key=lambda r: (not r.startswith(key[0]), r)):
            if pattern.search(self.cue[rel]):
                return rel
        return None


def _line_of(text: str, needle: str) -> int | None:
    for quoted in (f'"{needle}"', needle):
        at = text.find(quoted)
        if at >= 0:
            return text.count("\n", 0, at) + 1
    return None


def _merge(
    snap: Snapshot, files: _Files, evaluated: dict[str, Any]
) -> tuple[dict[str, Any], _Sources]:
    sources = _Sources(snap, files.cue, files.json)
    doc: dict[str, Any] = dict(evaluated)
    problems: list[Problem] = []
    for part in (CATALOGS, ENVIRONMENTS):
        doc.setdefault(part, {})
        if not isinstance(doc[part], dict):
            return doc, sources  # the schema reports it
    for rel, text in sorted(files.json.items()):
        name = snap.display(rel)
        value = _parse_json(name, text, problems)
        if value is None:
            continue
        if rel == f"{SETTINGS_STEM}.json":
            if "settings" in doc:
                problems.append(
                    Problem(name, "settings", "settings are also defined in CUE", "keep one")
                )
            doc["settings"] = value
            sources.owner[("settings",)] = rel
            continue
        part = rel.split("/", 1)[0]
        if part == CATALOGS:
            key = value.get("name")
            if not isinstance(key, str) or not key:
                problems.append(
                    Problem(
                        name,
                        "name",
                        "a catalog file needs a non-empty string 'name'",
                        'add "name": "example.org/team/app"',
                        line=1,
                    )
                )
                continue
        else:
            stem = Path(rel).stem
            key = value.get("name", stem) if isinstance(value.get("name"), str) else stem
        if key in doc[part]:
            other = sources.owner.get((part, key)) or sources._find_cue((part, key)) or "CUE"
            problems.append(
                Problem(
                    name,
                    "name" if part == CATALOGS else "",
                    f"{part[:-1]} {key!r} is also defined in {snap.display(other)}",
                    "each catalog and environment is defined once",
                )
            )
            continue
        doc[part][key] = value
        sources.owner[(part, key)] = rel
    if problems:
        raise InvalidState(problems)
    return doc, sources


# --------------------------------------------------------------------------- schema


_EXPECTED = {
    "itemRef": "a digest 'sha256:<64 hex>' or 'host/repo@sha256:<64 hex>'",
    "repository": "an OCI repository 'host[:port]/path' (lower-case path)",
    "source": "an OCI repository 'host[:port]/path' or an OCI layout 'oci:/dir'",
    "name": "a name of letters, digits, '.', '_' or '-'",
    "nonEmpty": "a non-empty string",
}


def _schema_problems(doc: dict[str, Any], sources: _Sources) -> list[Problem]:
    _, schema = _schema_texts()
    validator = jsonschema.Draft202012Validator(schema)
    problems = []
    for error in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path))):
        path = tuple(error.absolute_path)
        if error.validator == "additionalProperties":  # point at the unknown field itself
            path += tuple(sorted(_extra_fields(error))[:1])
        file, line = sources.locate(path)
        field_path = _field_path(path)
        problems.append(Problem(file, field_path, _describe(error), _hint(error), line=line))
    return problems


def _field_path(path: Iterable[Any]) -> str:
    out = ""
    for p in path:
        if isinstance(p, int):
            out += f"[{p}]"
        elif re.fullmatch(r"[A-Za-z_][\w-]*", str(p)):
            out += f".{p}" if out else str(p)
        else:
            out += f"[{json.dumps(p)}]"
    return out


def _extra_fields(error: jsonschema.ValidationError) -> set[str]:
    schema: Any = error.schema
    instance: Any = error.instance
    return set(instance) - set(schema.get("properties", {}))


def _describe(error: jsonschema.ValidationError) -> str:
    if error.validator == "additionalProperties":
        extra = sorted(_extra_fields(error))
        return f"unknown field{'s' if len(extra) > 1 else ''} {', '.join(map(repr, extra))}"
    if error.validator == "required":
        return error.message.replace("is a required property", "is required")
    if error.validator == "type":
        return f"expected {error.validator_value}, found {_short(error.instance)}"
    _, schema = _schema_texts()
    named = next((n for n, d in schema["$defs"].items() if d == error.schema), None)
    if named in _EXPECTED:
        return f"{_short(error.instance)} is not {_EXPECTED[named]}"
    return error.message if len(error.message) < 200 else error.message[:200] + "..."


def _hint(error: jsonschema.ValidationError) -> str:
    if error.validator == "additionalProperties":
        return "remove it or fix its spelling; see schemas/reconciler.schema.json"
    return "see schemas/reconciler.schema.json for the expected shape"


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


# --------------------------------------------------------------------------- checks


class _Checker:
    """Cross-checks of a schema-valid document; builds the model while it checks."""

    def __init__(self, snap: Snapshot, doc: dict[str, Any], sources: _Sources) -> None:
        self.snap, self.doc, self.sources = snap, doc, sources
        self.problems: list[Problem] = []

    def problem(self, path: tuple[Any, ...], message: str, hint: str = "") -> None:
        file, line = self.sources.locate(path)
        self.problems.append(Problem(file, _field_path(path), message, hint, line=line))

    def build(self) -> DesiredState:
        settings = self._settings(self.doc.get("settings") or {})
        catalogs = {name: self._catalog(name, raw) for name, raw in self.doc[CATALOGS].items()}
        envs = {name: self._environment(name, raw) for name, raw in self.doc[ENVIRONMENTS].items()}
        tags: dict[str, tuple[DesiredTag, ...]] = {}
        policies: dict[str, Policy] = {}
        for env in envs.values():
            tags[env.name] = self._tags(env, catalogs)
            policy = env.verify or settings.verify
            if policy is None or policy.empty:
                self.problem(
                    (ENVIRONMENTS, env.name, "verify"),
                    "no signature policy: signatures are required for every environment",
                    "add verify.keys or verify.identities (here or in settings.verify), or set "
                    "verify.insecureSkipSignatures: true as the explicit opt-out "
                    "(shown as UNVERIFIED)",
                )
            else:
                policies[env.name] = policy
        self._check_requires(envs)
        self._check_unique_targets(tags)
        if self.problems:
            raise InvalidState(self.problems)
        return DesiredState(
            commit=self.snap.commit,
            tree=self.snap.tree_id,
            settings=settings,
            catalogs=MappingProxyType(catalogs),
            environments=MappingProxyType(envs),
            tags=MappingProxyType(tags),
            policies=MappingProxyType(policies),
            inputs=self.snap.inputs(),
        )

    def _settings(self, raw: dict[str, Any]) -> Settings:
        registries = {
            host: RegistrySettings(
                plain_http=bool(r.get("plainHTTP", False)),
                ca_file=r.get("caFile"),
                concurrency=r.get("concurrency"),
                requests_per_second=r.get("requestsPerSecond"),
            )
            for host, r in (raw.get("registries") or {}).items()
        }
        signers = (raw.get("git") or {}).get("allowedSigners")
        signers_data = None
        if signers and not self.snap.exists(signers):
            self.problem(
                ("settings", "git", "allowedSigners"),
                f"{signers!r} is not a file in the repository",
                "commit the SSH allowed-signers file or fix the path",
            )
        elif signers:
            signers_data = self.snap.read(signers)
        verify = raw.get("verify")
        return Settings(
            registries=MappingProxyType(registries),
            verify=self._policy(("settings", "verify"), verify) if verify is not None else None,
            allowed_signers=signers,
            allowed_signers_data=signers_data,
        )

    def _policy(self, path: tuple[Any, ...], raw: dict[str, Any]) -> Policy:
        keys = []
        for i, key in enumerate(raw.get("keys") or []):
            keys.append(self._key((*path, "keys", i), key))
        identities = []
        for i, ident in enumerate(raw.get("identities") or []):
            subject, regexp = ident.get("subject"), ident.get("subjectRegExp")
            if (subject is None) == (regexp is None):
                self.problem(
                    (*path, "identities", i),
                    "an identity needs exactly one of 'subject' or 'subjectRegExp'",
                    "name the signer exactly (subject) or by an anchored regexp (subjectRegExp)",
                )
            if regexp is not None:
                try:
                    re.compile(regexp)
                except re.error as exc:
                    self.problem(
                        (*path, "identities", i, "subjectRegExp"),
                        f"not a valid regular expression: {exc}",
                    )
            identities.append(Identity(ident["issuer"], subject, regexp))
        root = raw.get("trustedRoot")
        root_json = None
        if root is not None:
            if self.snap.exists(root):
                root_json = self.snap.read(root).decode("utf-8", "replace")
            else:
                self.problem(
                    (*path, "trustedRoot"),
                    f"{root!r} is not a file in the repository",
                    "commit the trusted_root.json or fix the path",
                )
        return Policy(
            keys=tuple(keys),
            identities=tuple(identities),
            trusted_root=root,
            trusted_root_json=root_json,
            insecure_skip_signatures=bool(raw.get("insecureSkipSignatures", False)),
        )

    def _key(self, path: tuple[Any, ...], value: str) -> PublicKey:
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        if "-----BEGIN" in value:
            source, pem = "inline", value
        elif self.snap.exists(value):
            source, pem = value, self.snap.read(value).decode("utf-8", "replace")
        else:
            self.problem(
                path,
                f"{value!r} is neither a file in the repository nor an inline PEM key",
                "commit the cosign public key (e.g. keys/cosign.pub) or fix the path",
            )
            return PublicKey(value, "")
        try:
            load_pem_public_key(pem.encode())
        except (ValueError, TypeError) as exc:
            self.problem(
                path,
                f"{source}: not a PEM public key ({exc.__class__.__name__})",
                "use the cosign.pub written by `cosign generate-key-pair`",
            )
        return PublicKey(source, pem)

    def _catalog(self, name: str, raw: dict[str, Any]) -> Catalog:
        releases = []
        seen: dict[str, int] = {}
        for i, rel in enumerate(raw.get("releases", [])):
            if rel["name"] in seen:
                self.problem(
                    (CATALOGS, name, "releases", i, "name"),
                    f"release {rel['name']!r} appears twice (also releases[{seen[rel['name']]}])",
                    "release names are unique within a catalog",
                )
            seen.setdefault(rel["name"], i)
            releases.append(
                Release(
                    name=rel["name"],
                    items=MappingProxyType(
                        {item: ItemRef.parse(ref) for item, ref in rel.get("items", {}).items()}
                    ),
                    metadata=frozen_map(rel.get("metadata")),
                    hazards=frozen_map(rel.get("hazards")),
                )
            )
        signers = raw.get("signers")
        return Catalog(
            name=name,
            source=raw["source"],
            releases=tuple(releases),
            signers=self._policy((CATALOGS, name, "signers"), signers) if signers else None,
            file=self.sources.locate((CATALOGS, name))[0],
        )

    def _environment(self, name: str, raw: dict[str, Any]) -> Environment:
        file = self.sources.locate((ENVIRONMENTS, name))[0]
        if file.endswith(".cue") and raw.get("name", name) != name:
            self.problem(
                (ENVIRONMENTS, name, "name"),
                f"name {raw['name']!r} differs from its key {name!r}",
                "drop 'name' or make it equal to the key",
            )
        target = raw.get("target") or {}
        verify = raw.get("verify")
        items = raw.get("items")
        return Environment(
            name=name,
            catalog=raw["catalog"],
            release=raw["release"],
            items=tuple(items) if items is not None else None,
            target_repository=target.get("repository"),
            tag_template=target.get("tag", DEFAULT_TAG_TEMPLATE),
            requires=tuple(raw.get("requires") or ()),
            verify=self._policy((ENVIRONMENTS, name, "verify"), verify)
            if verify is not None
            else None,
            allow_hazards=bool(raw.get("allowHazards", False)),
            suspend=bool(raw.get("suspend", False)),
            prune=bool(raw.get("prune", False)),
            file=file,
        )

    def _tags(self, env: Environment, catalogs: Mapping[str, Catalog]) -> tuple[DesiredTag, ...]:
        path = (ENVIRONMENTS, env.name)
        if not NAME_RE.match(env.name):
            self.problem(
                path,
                f"environment name {env.name!r} is not a name of letters, digits, '.', '_' or '-'",
                "rename the environment (for a JSON file: the file or its 'name')",
            )
            return ()
        catalog = catalogs.get(env.catalog)
        if catalog is None:
            known = ", ".join(sorted(catalogs)) or "none"
            self.problem(
                (*path, "catalog"),
                f"unknown catalog {env.catalog!r}",
                f"use one of the catalogs defined under catalogs/ ({known})",
            )
            return ()
        release = catalog.release(env.release)
        if release is None:
            known = ", ".join(r.name for r in catalog.releases) or "none"
            self.problem(
                (*path, "release"),
                f"catalog {catalog.name!r} has no release {env.release!r}",
                f"use one of its releases ({known}) or add the release to {catalog.file}",
            )
            return ()
        names = env.items if env.items is not None else tuple(release.items)
        tags: list[DesiredTag] = []
        for i, item in enumerate(names):
            ref = release.items.get(item)
            if ref is None:
                self.problem(
                    (*path, "items", i),
                    f"release {release.name!r} of {catalog.name!r} has no item {item!r}",
                    f"use one of its items ({', '.join(release.items) or 'none'})",
                )
                continue
            try:
                tag = expand_tag(env.tag_template, env.name, item, release.name)
            except ValueError as exc:
                self.problem(
                    (*path, "target", "tag"),
                    f"{exc} in tag template {env.tag_template!r}",
                    "use only {env}, {item} and {release}",
                )
                return tuple(tags)
            if not TAG_RE.match(tag):
                self.problem(
                    (*path, "target", "tag"),
                    f"template {env.tag_template!r} expands to {tag!r} for item {item!r}, "
                    "which is not a valid OCI tag",
                    "a tag is 1-128 characters of [A-Za-z0-9_.-] and starts with a letter, "
                    "digit or '_'",
                )
                continue
            if tag.startswith(RECORD_TAG_PREFIX):
                self.problem(
                    (*path, "target", "tag"),
                    f"{tag!r} is reserved: tags starting {RECORD_TAG_PREFIX!r} hold apply records",
                    "choose another tag template",
                )
                continue
            source = ref.repository or catalog.source
            tags.append(
                DesiredTag(
                    environment=env.name,
                    item=item,
                    repository=env.target_repository or catalog.source,
                    tag=tag,
                    digest=ref.digest,
                    source_repository=source,
                )
            )
        return tuple(tags)

    def _check_requires(self, envs: Mapping[str, Environment]) -> None:
        for env in envs.values():
            for i, required in enumerate(env.requires):
                other = envs.get(required)
                path = (ENVIRONMENTS, env.name, "requires", i)
                if required == env.name:
                    self.problem(path, "an environment cannot require itself")
                elif other is None:
                    self.problem(
                        path,
                        f"unknown environment {required!r}",
                        f"use one of: {', '.join(sorted(envs))}",
                    )
                elif other.catalog != env.catalog:
                    self.problem(
                        path,
                        f"{required!r} runs catalog {other.catalog!r}, not {env.catalog!r}",
                        "requires names environments of the same catalog",
                    )
        reported: set[str] = set()
        for start in sorted(envs):
            cycle = _find_cycle(start, envs)
            if cycle and not reported.intersection(cycle):
                reported.update(cycle)
                self.problem(
                    (ENVIRONMENTS, cycle[0], "requires"),
                    "promotion order forms a cycle: " + " -> ".join([*cycle, cycle[0]]),
                    "requires must name environments earlier in the promotion order",
                )

    def _check_unique_targets(self, tags: Mapping[str, tuple[DesiredTag, ...]]) -> None:
        owner: dict[str, DesiredTag] = {}
        for env in sorted(tags):
            for tag in tags[env]:
                first = owner.setdefault(tag.reference, tag)
                if first is not tag:
                    self.problem(
                        (ENVIRONMENTS, env, "target", "tag"),
                        f"writes {tag.reference} (item {tag.item!r}), which environment "
                        f"{first.environment!r} also writes (item {first.item!r})",
                        "every environment and item needs its own target tag: "
                        "include {env} and {item} in target.tag",
                    )


def _find_cycle(start: str, envs: Mapping[str, Environment]) -> list[str] | None:
    """The first ``requires`` cycle reachable from ``start``, as a list of names."""
    stack: list[str] = []

    def visit(name: str) -> list[str] | None:
        if name in stack:
            return stack[stack.index(name) :]
        env = envs.get(name)
        if env is None:
            return None
        stack.append(name)
        for nxt in env.requires:
            if nxt != name and (found := visit(nxt)):
                return found
        stack.pop()
        return None

    return visit(start)


# --------------------------------------------------------------------------- entry


class Loader:
    """Loads desired state; keeps the ``cue`` cache for the life of the process."""

    def __init__(self, cache_dir: Path | None = None) -> None:
        self.cache = CueCache(cache_dir)
        self.cue_calls = 0

    def load(self, snap: Snapshot) -> DesiredState:
        files = _read_state_files(snap)
        if files.problems:
            raise InvalidState(files.problems)
        evaluated: dict[str, Any] = {}
        if files.cue:
            key = _cache_key(snap.tree_id, files.cue)
            cached = self.cache.get(key)
            if cached is None:
                self.cue_calls += 1
                evaluated = _evaluate_cue(snap, files.cue)
                self.cache.put(key, evaluated)
            else:
                log.debug("desired state of tree %s from cache", snap.tree_id[:12])
                evaluated = cached
        doc, sources = _merge(snap, files, json.loads(json.dumps(evaluated)))
        problems = _schema_problems(doc, sources)
        if problems:
            raise InvalidState(problems)
        return _Checker(snap, doc, sources).build()
