"""The pure builder: a schema-valid document -> DesiredState, with every cross-check.

It reads nothing but through the ``StateReader`` it is given (keys, trusted roots, the
allowed-signers file), so each file lands in the snapshot's ``inputs``; unit tests give
it an in-memory reader. Which file defines what comes from the ``SourceMap``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Protocol

from reconciler import receivers
from reconciler.desired.files import CATALOGS, ENVIRONMENTS, StateReader
from reconciler.desired.governance import freeze_windows, governance
from reconciler.desired.sources import SourceMap, format_cue_path
from reconciler.errors import InvalidState, Problem
from reconciler.model import (
    DEFAULT_TAG_TEMPLATE,
    NAME_RE,
    NOTIFY_EVENTS,
    RECORD_TAG_PREFIX,
    TAG_RE,
    AttestationRule,
    Catalog,
    DesiredState,
    DesiredTag,
    Discovery,
    Environment,
    ForgeSettings,
    FreezeWindow,
    Governance,
    Identity,
    ItemRef,
    NotifyTarget,
    Policy,
    PublicKey,
    RegistryEntry,
    Release,
    Settings,
    expand_tag,
    frozen_map,
    matches_paths,
    record_tag,
)
from reconciler.registry.errors import InvalidReference
from reconciler.registry.reference import canonical_repository, parse_reference

# Predicate types whose builder id and build type a policy may pin (SLSA v1 and v0.2).
SLSA_PROVENANCE = ("https://slsa.dev/provenance/v1", "https://slsa.dev/provenance/v0.2")
MAX_CA_BYTES = 1 << 20  # a registry's caFile


class Snapshotish(StateReader, Protocol):
    """A StateReader that also names its commit and reports what was read."""

    @property
    def commit(self) -> str:
        """The commit the state is of."""

    @property
    def tree_id(self) -> str:
        """The tree evaluated: what the evaluation cache is keyed by."""

    def inputs(self) -> frozenset[str]:
        """Every path read or looked up: what an unsigned commit must not change."""


class Builder:
    """Cross-checks of a schema-valid document; builds the model while it checks."""

    def __init__(self, snap: Snapshotish, doc: dict[str, Any], sources: SourceMap) -> None:
        self.snap, self.doc, self.sources = snap, doc, sources
        self.problems: list[Problem] = []

    def problem(self, path: tuple[Any, ...], message: str, hint: str = "") -> None:
        """Note a problem at ``path`` and go on, so one run reports every problem."""
        file, line = self.sources.where(path)
        self.problems.append(Problem(file, format_cue_path(path), message, hint, line=line))

    def defined_in(self, part: str, name: str) -> tuple[str, tuple[str, ...]]:
        """(primary file, every file) defining an object, as shown to the user."""
        files = tuple(self.snap.display(f) for f in self.sources.files((part, name)))
        primary = self.sources.primary(part, name)
        if primary is None:  # fail closed: an object of unknown origin is not applied
            self.problem(
                (part, name),
                "cue reported no position for this object, so which file defines it is unknown",
                "run `cue eval -E` on the state files to see why; report it if cue is current",
            )
        return (self.snap.display(primary) if primary else ""), files

    def build(self) -> DesiredState:
        """The desired state, built while it is cross-checked (a signature policy for every
        environment, ``requires`` known and acyclic, one writer per target tag, no input
        under ``settings.git.unsignedPaths``, …); every problem is collected before raising.

        Raises:
            InvalidState: with every problem found.
        """
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
        for path in sorted(self.snap.inputs()):
            if matches_paths(path, settings.unsigned_paths):
                self.problem(
                    ("settings", "git", "unsignedPaths"),
                    f"{path} is read by the desired state, but matches an unsigned path, "
                    "which any commit may change without a signature",
                    f"move {path} out of the unsigned paths, or narrow the pattern",
                )
        if self.problems:
            raise InvalidState(self.problems)
        return DesiredState(
            commit=self.snap.commit,
            tree=self.snap.tree_id,
            proposed_settings=settings,
            catalogs=MappingProxyType(catalogs),
            environments=MappingProxyType(envs),
            tags=MappingProxyType(tags),
            policies=MappingProxyType(policies),
            inputs=self.snap.inputs(),
        )

    def _settings(self, raw: dict[str, Any]) -> Settings:
        registries = {
            host: self._registry(host, r) for host, r in (raw.get("registries") or {}).items()
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
        records = raw.get("records") or {}
        record_keys = tuple(
            self._key(("settings", "records", "keys", i), key)
            for i, key in enumerate(records.get("keys") or [])
        )
        return Settings(
            registries=MappingProxyType(registries),
            verify=self._policy(("settings", "verify"), verify) if verify is not None else None,
            allowed_signers=signers,
            allowed_signers_data=signers_data,
            record_keys=record_keys,
            records_insecure_unsigned=bool(records.get("insecureUnsigned", False)),
            notify=self._notify(raw.get("notify") or []),
            unsigned_paths=tuple((raw.get("git") or {}).get("unsignedPaths") or ()),
            freeze=tuple(self._freeze(("settings", "freeze"), raw.get("freeze") or ())),
            forge=self._forge(raw.get("forge")),
        )

    def _forge(self, raw: dict[str, Any] | None) -> ForgeSettings | None:
        """``settings.forge`` (the schemas check its shape); a host the token must never
        reach (link-local, a metadata endpoint) is refused here."""
        if not raw:
            return None
        url = str(raw["url"]).rstrip("/")
        host = receivers.literal_host(url)
        if host is not None and receivers.classify(host)[0] is receivers.Reach.NEVER:
            self.problem(
                ("settings", "forge", "url"),
                f"{host} is {receivers.classify(host)[1]}: the forge's token never goes there",
                "name the forge by its public host name or address",
            )
        return ForgeSettings(raw["type"], url, raw["repository"], raw["tokenEnv"])

    def _registry(self, host: str, r: dict[str, Any]) -> RegistryEntry:
        """One host's settings; ``caFile`` is read from the tree (an input of the state)."""
        ca_file, ca_data = r.get("caFile"), None
        where = ("settings", "registries", host, "caFile")
        if ca_file and not self.snap.exists(ca_file):
            self.problem(where, f"{ca_file!r} is not a file in the repository",
                         "commit the CA certificate (PEM) or fix the path")  # fmt: skip
        elif ca_file:
            ca_data = self.snap.read(ca_file)
            if len(ca_data) > MAX_CA_BYTES or b"-----BEGIN CERTIFICATE-----" not in ca_data:
                self.problem(where, f"{ca_file!r} is not a PEM CA certificate (under 1 MiB)",
                             "commit the CA's certificate in PEM form")  # fmt: skip
                ca_data = None
        return RegistryEntry(
            plain_http=bool(r.get("plainHTTP", False)),
            ca_file=ca_file,
            ca_data=ca_data,
            concurrency=r.get("concurrency"),
            requests_per_second=r.get("requestsPerSecond"),
            connect_timeout=r.get("connectTimeout"),
            read_timeout=r.get("readTimeout"),
            attempts=r.get("attempts"),
        )

    def _policy(self, path: tuple[Any, ...], raw: dict[str, Any]) -> Policy:
        keys = []
        for i, key in enumerate(raw.get("keys") or []):
            keys.append(self._key((*path, "keys", i), key))
        identities = [
            self._identity((*path, "identities", i), ident)
            for i, ident in enumerate(raw.get("identities") or [])
        ]
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
        ignore_tlog = bool(raw.get("insecureIgnoreTlog", False))
        if ignore_tlog and not keys:
            self.problem(
                (*path, "insecureIgnoreTlog"),
                "insecureIgnoreTlog applies to key signatures, and this policy names no key "
                "(keyless signatures always need their transparency-log entry)",
                "remove insecureIgnoreTlog, or add the keys it is meant for",
            )
        attestations = []
        for i, rule in enumerate(raw.get("attestations") or []):
            kind = rule["predicateType"]
            for field in ("builderId", "buildType"):
                if field in rule and kind not in SLSA_PROVENANCE:
                    self.problem(
                        (*path, "attestations", i, field),
                        f"{field} applies to SLSA provenance, not to {kind!r}",
                        f"use predicateType {SLSA_PROVENANCE[0]!r} or drop {field}",
                    )
            attestations.append(AttestationRule(kind, rule.get("builderId"), rule.get("buildType")))
        return Policy(
            keys=tuple(keys),
            identities=tuple(identities),
            trusted_root=root,
            trusted_root_json=root_json,
            insecure_skip_signatures=bool(raw.get("insecureSkipSignatures", False)),
            insecure_ignore_tlog=ignore_tlog,
            signatures_repository=(raw.get("signatures") or {}).get("repository"),
            attestations=tuple(attestations),
        )

    def _identity(self, path: tuple[Any, ...], ident: dict[str, Any]) -> Identity:
        """One keyless signer; the field names are cosign's ``--certificate-*`` flags."""
        for exact, pattern in (("issuer", "issuerRegExp"), ("subject", "subjectRegExp")):
            if (ident.get(exact) is None) == (ident.get(pattern) is None):
                self.problem(
                    path,
                    f"an identity needs exactly one of '{exact}' or '{pattern}'",
                    f"name the {'signer' if exact == 'subject' else 'OIDC issuer'} exactly "
                    f"({exact}) or by an anchored regexp ({pattern})",
                )
            regexp = ident.get(pattern)
            if regexp is not None:
                try:
                    re.compile(regexp)
                except re.error as exc:
                    self.problem((*path, pattern), f"not a valid regular expression: {exc}")
        return Identity(
            issuer=ident.get("issuer"),
            subject=ident.get("subject"),
            subject_regexp=ident.get("subjectRegExp"),
            issuer_regexp=ident.get("issuerRegExp"),
            github_workflow_repository=ident.get("githubWorkflowRepository"),
            github_workflow_ref=ident.get("githubWorkflowRef"),
            github_workflow_trigger=ident.get("githubWorkflowTrigger"),
            github_workflow_sha=ident.get("githubWorkflowSha"),
            github_workflow_name=ident.get("githubWorkflowName"),
            build_signer_uri=ident.get("buildSignerURI"),
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
        file, files = self.defined_in(CATALOGS, name)
        return Catalog(
            name=name,
            source=raw["source"],
            releases=tuple(releases),
            signers=self._policy((CATALOGS, name, "signers"), signers) if signers else None,
            file=file,
            files=files,
            discover=self._discover(name, raw),
        )

    def _discover(self, name: str, raw: dict[str, Any]) -> Discovery | None:
        """``discover``: a regexp with a version group, and where each item's tags are."""
        spec = raw.get("discover")
        if spec is None:
            return None
        path = (CATALOGS, name, "discover")
        try:
            if re.compile(spec["tag"]).groups == 0:
                self.problem(
                    (*path, "tag"),
                    "the regexp has no group: which part of the tag is the release name?",
                    'capture it, e.g. "^(v[0-9]+[.][0-9]+[.][0-9]+)$" or (?P<version>...)',
                )
        except re.error as exc:
            self.problem((*path, "tag"), f"not a valid regular expression: {exc}")
        found = Discovery(spec["tag"], frozen_map(spec.get("items")))
        if not found.items:
            self.problem(
                (*path, "items"),
                "names no item",
                'map each item to a repository or a tag prefix, e.g. {web: "web-"}',
            )
        for item in found.items:
            repository, prefix = found.location(item, raw["source"])
            try:
                if repository != raw["source"]:
                    parse_reference(repository)
            except InvalidReference as exc:
                self.problem((*path, "items", item), exc.message, exc.hint)
            if prefix and not re.fullmatch(r"[A-Za-z0-9_.-]+", prefix):
                self.problem(
                    (*path, "items", item),
                    f"tag prefix {prefix!r} has characters no tag can hold",
                    "a tag is made of letters, digits, '_', '.' and '-'",
                )
        return found

    def _notify(self, raw: list[dict[str, Any]]) -> tuple[NotifyTarget, ...]:
        """``settings.notify``: the URL, or the variable holding it (a secret URL)."""
        targets = []
        for i, one in enumerate(raw):
            url, url_env = one.get("url"), one.get("urlEnv")
            if (url is None) == (url_env is None):
                self.problem(
                    ("settings", "notify", i),
                    "a receiver needs exactly one of 'url' or 'urlEnv'",
                    "name the URL, or the environment variable holding it (for URLs that are "
                    "secrets themselves, like Slack's)",
                )
            elif url is not None and ("@" in url.split("/")[2] or "?" in url):
                self.problem(
                    ("settings", "notify", i, "url"),
                    "the URL carries credentials or a query string, which git would publish",
                    "move the URL to the reconciler's environment and name it with urlEnv",
                )
            elif url is not None and (host := receivers.literal_host(url)) is not None:
                reach, what = receivers.classify(host)
                if reach is receivers.Reach.NEVER:  # private ones: a warning of validate's
                    self.problem(
                        ("settings", "notify", i, "url"),
                        f"{host} is {what}: never a notification receiver",
                        "name a receiver the daemon may reach: a public host name or address",
                    )
            targets.append(
                NotifyTarget(
                    url=url,
                    events=tuple(one.get("events") or NOTIFY_EVENTS),
                    format=one.get("format", "generic"),
                    secret_env=one.get("secretEnv"),
                    url_env=url_env,
                )
            )
        return tuple(targets)

    def _environment(self, name: str, raw: dict[str, Any]) -> Environment:
        file, files = self.defined_in(ENVIRONMENTS, name)
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
            requires=tuple(_required(r) for r in raw.get("requires") or ()),
            verify=self._policy((ENVIRONMENTS, name, "verify"), verify)
            if verify is not None
            else None,
            allow_hazards=bool(raw.get("allowHazards", False)),
            suspend=bool(raw.get("suspend", False)),
            prune=bool(raw.get("prune", False)),
            file=file,
            files=files,
            follow=raw.get("follow"),
            governance=self._governance(name, raw),
        )

    def _governance(self, name: str, raw: dict[str, Any]) -> Governance:
        return governance(self.snap, name, raw, self.problem)

    def _freeze(self, path: tuple[Any, ...], raw: Any) -> list[FreezeWindow]:
        return freeze_windows(path, raw, self.problem)

    def _tags(self, env: Environment, catalogs: Mapping[str, Catalog]) -> tuple[DesiredTag, ...]:
        path = (ENVIRONMENTS, env.name)
        if not NAME_RE.match(env.name):
            self.problem(
                path,
                f"environment name {env.name!r} is not a name of letters, digits, '.', '_' or '-'",
                "rename the environment (for a JSON file: the file or its 'name')",
            )
            return ()
        if not TAG_RE.match(record_tag(env.name)):
            limit = 128 - len(RECORD_TAG_PREFIX)
            self.problem(
                path,
                f"environment name {env.name[:40]!r}… is {len(env.name)} characters: its apply "
                f"record tag {record_tag(env.name)[:40]!r}… would be over the 128-character "
                "limit of an OCI tag, so no record could be written",
                f"use a name of at most {limit} characters (for a JSON file: rename the file "
                "or set 'name')",
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
                key = f"{canonical_repository(tag.repository)}:{tag.tag}"
                first = owner.setdefault(key, tag)
                if first is not tag:
                    same = "" if first.reference == tag.reference else f" as {first.reference}"
                    self.problem(
                        (ENVIRONMENTS, env, "target", "tag"),
                        f"writes {tag.reference} (item {tag.item!r}), which environment "
                        f"{first.environment!r} also writes{same} (item {first.item!r})",
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


def _required(entry: str | dict[str, Any]) -> str:
    """A ``requires`` entry's environment: a name, or ``{environment, soak}``."""
    return entry if isinstance(entry, str) else str(entry["environment"])
