"""New releases: resolve each item's tag, verify it, and write it into the catalog file.

A release reaches a catalog the way a promotion reaches an environment: as a commit on
a branch for a merge request (``Workflows.release_add``). What this module adds:

1. :func:`resolve_item`: an item's ``REF`` (a tag in the catalog's source, a digest, or
   a full reference) -> the repository and the digest the tag points at now;
2. :func:`verify_items`: every digest hashes to itself (an index: every child) and the
   catalog's ``signers`` accept a signature of it (and an attestation per rule, as the
   gate judges them: ``signatures.judge``). Fail closed: a catalog without
   ``signers`` takes no new release unless it opts out explicitly;
3. :func:`insert_release`: the release as the first element of the catalog's
   ``releases`` list (newest first), every other byte of the CUE or JSON file kept.

Release names are ordered by :func:`version_key` (discovery and ``follow: latest``);
the order of a catalog's list is for people.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial

from reconciler.desired import canonical_repository
from reconciler.errors import ReconcilerError
from reconciler.model import Catalog
from reconciler.registry import Reference, Registries, Registry, parse_reference
from reconciler.registry.oci import check_tag
from reconciler.registry.reference import LAYOUT_PREFIX
from reconciler.verify import Refused, Rule, check_integrity
from reconciler.verify.signatures import find_evidence, judge

log = logging.getLogger(__name__)

UNVERIFIED = "UNVERIFIED (catalog signers: insecureSkipSignatures)"


class CannotEdit(ReconcilerError):
    """The catalog file is not written in a way a release can be inserted into safely."""


# --------------------------------------------------------------------------- ordering

_CORE = re.compile(r"^[vV]?(\d+(?:\.\d+)*)(.*)$")
_RUNS = re.compile(r"\d+|\D+")


def version_key(name: str) -> tuple[object, ...]:
    """Sorts release names as versions: ``v1.10`` after ``v1.9``, ``2.0rc1`` before
    ``2.0``, ``1.2`` equal to ``1.2.0``; names without a numeric core sort first, by
    their digit runs (dates work)."""
    m = _CORE.match(name)
    if m is None:
        return (0, _natural(name))
    core = [int(p) for p in m.group(1).split(".")]
    while len(core) > 1 and core[-1] == 0:
        core.pop()
    rest = m.group(2).lstrip("-+._")
    return (1, tuple(core), 0 if rest else 1, _natural(rest))


def _natural(text: str) -> tuple[tuple[int, object], ...]:
    return tuple((0, int(r)) if r.isdigit() else (1, r) for r in _RUNS.findall(text))


# --------------------------------------------------------------------------- items


@dataclass(frozen=True)
class NewItem:
    """One item of a new release: where it lives, the tag it came from, its digest."""

    item: str
    repository: str  # the catalog's source, or another repository
    digest: str
    tag: str | None = None  # None: given as a digest
    in_source: bool = True

    @property
    def ref(self) -> str:
        """The catalog's item value: a digest in the source, else ``repository@digest``."""
        return self.digest if self.in_source else f"{self.repository}@{self.digest}"

    @property
    def origin(self) -> str:
        """Where the digest came from, as shown in the commit message: the tag, else the digest."""
        return f"{self.repository}:{self.tag}" if self.tag else f"{self.repository}@{self.digest}"

    def to_json(self) -> dict[str, object]:
        """For ``release add --json``."""
        return {
            "ref": self.ref,
            "repository": self.repository,
            "tag": self.tag,
            "digest": self.digest,
        }


def open_repository(registries: Registries, repository: str) -> tuple[Registry, str]:
    """The client and the repository name (or layout directory) of ``host/repo`` or ``oci:``."""
    ref = parse_reference(repository)
    return registries.get(ref), ref.repository


def resolve_item(registries: Registries, catalog: Catalog, item: str, ref: str) -> NewItem:
    """``ITEM=REF`` -> the digest it names now.

    ``REF`` is a tag in the catalog's source (``v1.3-web``), a digest there
    (``sha256:…``) or a full reference (``host/repo:tag``, ``host/repo@sha256:…``,
    ``oci:/dir:tag``).

    Raises:
        Refused: the tag does not exist, or the reference cannot be a catalog item.
        RegistryError: the registry failed (transient or not).
    """
    if not ref:
        raise Refused(Rule.INTEGRITY, f"item {item!r} names no tag or digest")
    if "/" in ref or ref.startswith(LAYOUT_PREFIX):
        parsed = parse_reference(ref)
        repository = str(Reference(parsed.registry, parsed.repository))
        tag, digest = parsed.tag, parsed.digest
        if tag is None and digest is None:
            raise Refused(
                Rule.INTEGRITY,
                f"item {item!r}: {ref} names no tag and no digest",
                "write host/repository:tag or host/repository@sha256:…",
            )
    elif ref.startswith("sha256:"):
        repository, tag, digest = catalog.source, None, ref
    else:
        repository, tag, digest = catalog.source, check_tag(ref), None
    in_source = canonical_repository(repository) == canonical_repository(catalog.source)
    if in_source:
        repository = catalog.source
    elif repository.startswith(LAYOUT_PREFIX):
        raise Refused(
            Rule.INTEGRITY,
            f"item {item!r}: {repository} is another OCI layout than the catalog's source, "
            "and a catalog names other repositories only as host/repository@digest",
            "copy the artifact into the catalog's source, or push it to a registry",
        )
    registry, repo = open_repository(registries, repository)
    if digest is None:
        digest = registry.resolve(repo, tag or "")
        if digest is None:
            raise Refused(
                Rule.INTEGRITY,
                f"item {item!r}: no tag {tag!r} in {repository}",
                "push the build first, or fix the tag",
            )
    log.debug("%s: %s is %s", item, f"{repository}:{tag}" if tag else repository, digest)
    return NewItem(item, repository, digest, tag, in_source)


def verify_items(
    registries: Registries, catalog: Catalog, release: str, items: Sequence[NewItem]
) -> dict[str, str]:
    """digest -> how it was verified. Every manifest must hash to its digest and the
    catalog's ``signers`` must accept a signature of it.

    Raises:
        Refused: integrity, or no signature the signers accept (or no signers at all).
    """
    signers = catalog.signers
    if signers is None or signers.empty:
        raise Refused(
            Rule.SIGNATURES,
            f"catalog {catalog.name} names no signers, so nothing says who may publish "
            f"its releases; {release} was not added",
            f"add signers (keys or identities) to {catalog.file}, or set "
            "signers: insecureSkipSignatures: true to add releases unverified",
        )
    verified: dict[str, str] = {}
    for new in items:
        registry, repo = open_repository(registries, new.repository)
        fetch = partial(registry.get_manifest, repo)
        manifests = check_integrity(fetch, new.digest, new.repository)
        how = f"integrity ({manifests} manifests)"
        if signers.insecure_skip_signatures:
            log.warning("%s/%s: added UNVERIFIED (the catalog skips signatures)", release, new.item)
            verified[new.digest] = f"{how}; {UNVERIFIED}"
            continue
        evidence = find_evidence(registry, repo, new.digest)
        elsewhere = signers.signatures_repository
        if elsewhere and canonical_repository(elsewhere) != canonical_repository(new.repository):
            other, other_repo = open_repository(registries, elsewhere)
            evidence += find_evidence(other, other_repo, new.digest)
        what = f"{catalog.name} {release}/{new.item} (catalog signers)"
        judged = judge(signers, new.digest, evidence, what)
        log.debug("%s: signed: %s", new.item, judged.signature)
        attested = "".join(f"; attested: {m}" for m in judged.attestations)
        verified[new.digest] = f"{how}; catalog signer: {judged.signature}{attested}"
    return verified


# --------------------------------------------------------------------------- the entry


@dataclass(frozen=True)
class Entry:
    """A release as written into a catalog file."""

    name: str
    items: Mapping[str, str]  # item -> ref, in the order given
    metadata: Mapping[str, str] = field(default_factory=dict)
    hazards: Mapping[str, str] = field(default_factory=dict)

    def document(self) -> dict[str, object]:
        """The entry as a JSON object, optional maps left out when empty."""
        doc: dict[str, object] = {"name": self.name, "items": dict(self.items)}
        if self.metadata:
            doc["metadata"] = dict(self.metadata)
        if self.hazards:
            doc["hazards"] = dict(self.hazards)
        return doc


@dataclass(frozen=True)
class _Style:
    json: bool
    inline: bool
    indent: str  # of the element's first line
    unit: str  # one level of indentation


_CUE_IDENT = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_CUE_KEYWORDS = frozenset(
    {"package", "import", "for", "in", "if", "let", "true", "false", "null", "div"}
    | {"mod", "quo", "rem", "len", "close"}
)


def _cue_label(key: str) -> str:
    return key if _CUE_IDENT.match(key) and key not in _CUE_KEYWORDS else _string(key)


def _string(value: str) -> str:
    """A double-quoted string literal that JSON and CUE read alike (no ``\\(``)."""
    return json.dumps(value, ensure_ascii=False)


def _cue_struct(values: Mapping[str, str]) -> str:
    return "{" + ", ".join(f"{_cue_label(k)}: {_string(v)}" for k, v in values.items()) + "}"


def render(entry: Entry, style: _Style) -> str:
    """The element's text; its first line carries no indentation (it follows the insert
    point), the others start with ``style.indent``."""
    doc = entry.document()
    if style.json:
        if style.inline:
            return json.dumps(doc, ensure_ascii=False, separators=(", ", ": "))
        text = json.dumps(doc, ensure_ascii=False, indent=style.unit)
        return text.replace("\n", "\n" + style.indent)
    fields = [("name", _string(entry.name)), ("items", _cue_struct(entry.items))]
    if entry.metadata:
        fields.append(("metadata", _cue_struct(entry.metadata)))
    if entry.hazards:
        fields.append(("hazards", _cue_struct(entry.hazards)))
    if style.inline:
        return "{" + ", ".join(f"{k}: {v}" for k, v in fields) + "}"
    inner, deeper = style.indent + style.unit, style.indent + style.unit * 2
    lines = ["{", f"{inner}name: {_string(entry.name)}", f"{inner}items: {{"]
    width = max((len(_cue_label(k)) for k in entry.items), default=0) + 1
    for key, ref in entry.items.items():
        lines.append(f"{deeper}{(_cue_label(key) + ':').ljust(width)} {_string(ref)}")
    lines.append(f"{inner}}}")
    lines += [f"{inner}{k}: {v}" for k, v in fields[2:]]
    lines.append(f"{style.indent}}}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- the file


@dataclass(frozen=True)
class _Token:
    kind: str  # "string", "word" or "punct"
    start: int
    end: int
    value: str  # a string's value; else the text


def _tokens(text: str, cue: bool) -> Iterator[_Token]:
    """CUE or JSON tokens, without whitespace and comments; strings decoded roughly
    (enough to compare keys), with CUE's ``#"raw"#`` and ``\"\"\"`` forms."""
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
            continue
        if cue and text.startswith("//", i):
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        hashes = 0
        if cue:
            while i + hashes < n and text[i + hashes] == "#":
                hashes += 1
        quote_at = i + hashes
        if quote_at < n and (text[quote_at] == '"' or (cue and text[quote_at] == "'")):
            q = text[quote_at]
            delim = q * 3 if cue and text.startswith(q * 3, quote_at) else q
            close = delim + "#" * hashes
            j = quote_at + len(delim)
            while j < n and not text.startswith(close, j):
                j += 2 if text[j] == "\\" and not hashes else 1
            end = min(j + len(close), n)
            raw = text[quote_at + len(delim) : j]
            try:
                value = json.loads(f'"{raw}"') if delim == '"' and not hashes else raw
            except ValueError:
                value = raw
            yield _Token("string", i, end, value)
            i = end
            continue
        m = _WORD.match(text, i)
        if m:
            yield _Token("word", i, m.end(), m.group())
            i = m.end()
            continue
        yield _Token("punct", i, i + 1, c)
        i += 1


_WORD = re.compile(r"[A-Za-z0-9_$#]+")
_OPEN, _CLOSE = "[{(", "]})"


def _matching(tokens: Sequence[_Token], at: int) -> int:
    """The index of the token closing the bracket at ``tokens[at]``."""
    depth = 0
    for k in range(at, len(tokens)):
        t = tokens[k]
        if t.kind == "punct" and t.value in _OPEN:
            depth += 1
        elif t.kind == "punct" and t.value in _CLOSE:
            depth -= 1
            if depth == 0:
                return k
    raise CannotEdit("a bracket is never closed")


def _releases_lists(tokens: Sequence[_Token]) -> list[tuple[int, int]]:
    """(index of a ``releases`` key, index of its ``[``) for every list literal."""
    found = []
    for k in range(len(tokens) - 2):
        key, colon, bracket = tokens[k], tokens[k + 1], tokens[k + 2]
        if (
            key.kind in ("word", "string")
            and key.value == "releases"
            and colon.value == ":"
            and colon.kind == "punct"
            and bracket.kind == "punct"
            and bracket.value == "["
        ):
            found.append((k, k + 2))
    return found


def _line_start(text: str, at: int) -> int:
    return text.rfind("\n", 0, at) + 1


def _indent_of(text: str, at: int) -> str:
    start = _line_start(text, at)
    line = text[start:at]
    return line[: len(line) - len(line.lstrip(" \t"))]


def _unit_of(text: str, json_file: bool) -> str:
    """The file's indentation unit: a tab, or the smallest run of leading spaces."""
    widths = []
    for line in text.splitlines():
        if line.startswith("\t"):
            return "\t"
        stripped = len(line) - len(line.lstrip(" "))
        if stripped and line.strip():
            widths.append(stripped)
    if widths:
        return " " * min(widths)
    return "  " if json_file else "\t"


def insert_release(text: str, catalog: str, entry: Entry, json_file: bool) -> str:
    """``text`` with ``entry`` as the first element of ``catalog``'s ``releases`` list.

    Every other byte stays: the element is inserted after the line that opens the list
    (comments above the old first element stay with it), in the style of the elements
    already there (one line each, or one field per line, with their indentation).

    Raises:
        CannotEdit: no ``releases: [...]`` literal for the catalog in this file.
    """
    tokens = list(_tokens(text, cue=not json_file))
    lists = _releases_lists(tokens)
    if len(lists) > 1:
        # Several catalogs in one file: the first list after the catalog's own key.
        names = [
            k
            for k, t in enumerate(tokens[:-1])
            if t.kind == "string" and t.value == catalog and tokens[k + 1].value == ":"
        ]
        lists = [pair for pair in lists if pair[0] > names[0]][:1] if names else []
    if not lists:
        raise CannotEdit(
            f"found no `releases: [...]` list of {catalog} to add to",
            "write the releases as a list literal (releases: [...]) in the catalog's file, "
            "or add the release by hand",
        )
    key, opening = lists[0]
    closing = _matching(tokens, opening)
    open_at, close_at = tokens[opening].start, tokens[closing].start
    unit = _unit_of(text, json_file)
    if closing == opening + 1:  # an empty list
        outer = _indent_of(text, tokens[key].start)
        style = _Style(json_file, False, outer + unit, unit)
        body = render(entry, style) + ("" if json_file else ",")
        return f"{text[: open_at + 1]}\n{style.indent}{body}\n{outer}{text[close_at:]}"
    first = tokens[opening + 1]
    element_end = tokens[_matching(tokens, opening + 1)].end if first.value in _OPEN else first.end
    inline_list = "\n" not in text[open_at : first.start]
    if inline_list:
        style = _Style(json_file, True, "", unit)
        return f"{text[: first.start]}{render(entry, style)}, {text[first.start :]}"
    indent = _indent_of(text, first.start)
    if text[_line_start(text, first.start) : first.start].strip():
        indent = _indent_of(text, tokens[key].start) + unit
    if indent and not indent.startswith("\t") and "\t" not in indent:
        outer = _indent_of(text, tokens[key].start)
        unit = indent[len(outer) :] if indent.startswith(outer) and indent != outer else unit
    one_line = "\n" not in text[first.start : element_end]
    style = _Style(json_file, one_line, indent, unit)
    at = text.index("\n", open_at) + 1
    return f"{text[:at]}{indent}{render(entry, style)},\n{text[at:]}"
