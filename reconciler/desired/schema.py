"""JSON Schema on the merged document: one Problem per violation, at the user's file."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from reconciler.desired.cue import schema_texts
from reconciler.desired.sources import SourceMap, format_cue_path
from reconciler.errors import Problem
from reconciler.model import NOTIFY_ENV_HINT, NOTIFY_ENV_PREFIX

if TYPE_CHECKING:
    import jsonschema

_EXPECTED = {
    "itemRef": "a digest 'sha256:<64 hex>' or 'host/repo@sha256:<64 hex>'",
    "repository": "an OCI repository 'host[:port]/path' (lower-case path)",
    "source": "an OCI repository 'host[:port]/path' or an OCI layout 'oci:/dir'",
    "name": "a name of letters, digits, '.', '_' or '-'",
    "nonEmpty": "a non-empty string",
    "notifyEnv": f"a variable name starting with {NOTIFY_ENV_PREFIX}",
}
_HINTS = {"notifyEnv": NOTIFY_ENV_HINT}


def schema_problems(doc: dict[str, Any], sources: SourceMap) -> list[Problem]:
    """Every JSON Schema violation of ``doc``, each at the file and line that caused it and
    with a hint, rather than the validator's first error."""
    import jsonschema  # 50 ms of imports; a state read from the cache is never checked

    _, schema = schema_texts()
    validator = jsonschema.Draft202012Validator(schema)
    problems = []
    for error in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path))):
        path = tuple(error.absolute_path)
        if error.validator == "additionalProperties":  # point at the unknown field itself
            path += tuple(sorted(_extra_fields(error))[:1])
        file, line = sources.where(path)
        problems.append(
            Problem(file, format_cue_path(path), _describe(error), _hint(error), line=line)
        )
    return problems


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
    named = _named(error)
    if named in _EXPECTED:
        return f"{_short(error.instance)} is not {_EXPECTED[named]}"
    return error.message if len(error.message) < 200 else error.message[:200] + "..."


def _named(error: jsonschema.ValidationError) -> str | None:
    """The name of the ``$defs`` entry ``error`` is about, if any."""
    _, schema = schema_texts()
    return next((n for n, d in schema["$defs"].items() if d == error.schema), None)


def _hint(error: jsonschema.ValidationError) -> str:
    if error.validator == "additionalProperties":
        return "remove it or fix its spelling; see schemas/reconciler.schema.json"
    return _HINTS.get(
        _named(error) or "", "see schemas/reconciler.schema.json for the expected shape"
    )


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."
