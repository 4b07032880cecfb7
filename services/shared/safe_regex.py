"""The regular expressions of tenants' model schemas, run by RE2.

A JSON Schema ``pattern`` (or ``patternProperties`` key) is the tenant's code running on our
event loop at every write to one of its devices. Python's ``re`` backtracks: ``^(a+)+$``
against thirty ``a`` and a ``b`` takes minutes, stalling every tenant's requests. RE2
(google-re2) matches in time linear in the input and refuses what it cannot do so
(look-around, back-references) when the schema is stored, with a clear 422.

jsonschema calls ``re`` in three keywords (and one helper of ``unevaluatedProperties``);
:data:`SafeValidator` replaces the first three with RE2 versions through jsonschema's public
``validators.extend``, and :func:`unsafe_keywords` refuses ``unevaluatedProperties`` next to
``patternProperties``, the one combination still reaching ``re``.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from typing import Any

import re2
from jsonschema import Draft202012Validator, FormatChecker, ValidationError, validators

MAX_PATTERN_LENGTH = 1000
# RE2 compiles into a bounded automaton; this caps the memory one pattern may take.
_MAX_PATTERN_MEMORY = 4 << 20


class PatternError(ValueError):
    pass


def _options() -> Any:
    options = re2.Options()
    options.log_errors = False
    options.max_mem = _MAX_PATTERN_MEMORY
    return options


@lru_cache(maxsize=2048)
def compile_pattern(pattern: str) -> Any:
    """The compiled pattern; PatternError when RE2 cannot run it in linear time."""
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise PatternError(f"a pattern is at most {MAX_PATTERN_LENGTH} characters")
    try:
        return re2.compile(pattern, _options())
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        if isinstance(reason, bytes):
            reason = reason.decode(errors="replace")
        raise PatternError(
            f"{pattern!r} is not a pattern this service runs ({reason}); patterns are matched "
            "by RE2, without look-around or back-references"
        ) from None


def search(pattern: str, text: str) -> bool:
    return compile_pattern(pattern).search(text) is not None


FORMAT_CHECKER = FormatChecker()
FORMAT_CHECKER.checkers = dict(Draft202012Validator.FORMAT_CHECKER.checkers)


def _is_regex(instance: object) -> bool:
    if isinstance(instance, str):
        compile_pattern(instance)
    return True


FORMAT_CHECKER.checks("regex", raises=PatternError)(_is_regex)


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not search(pattern, instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties(
    validator: Any, patterns: dict[str, Any], instance: Any, schema: Any
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            if search(pattern, key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional(instance: dict[str, Any], schema: dict[str, Any]) -> Iterator[str]:
    properties = schema.get("properties", {})
    patterns = list(schema.get("patternProperties", {}))
    for key in instance:
        if key not in properties and not any(search(pattern, key) for pattern in patterns):
            yield key


def _additional_properties(
    validator: Any, additional: Any, instance: Any, schema: Any
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    extras = set(_additional(instance, schema))
    if validator.is_type(additional, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], additional, path=extra)
    elif not additional and extras:
        joined = ", ".join(repr(each) for each in sorted(extras))
        if "patternProperties" in schema:
            patterns = ", ".join(repr(each) for each in sorted(schema["patternProperties"]))
            yield ValidationError(f"{joined} do(es) not match any of the regexes: {patterns}")
        else:
            yield ValidationError(f"Additional properties are not allowed ({joined} unexpected)")


SafeValidator: Any = validators.extend(
    Draft202012Validator,
    {
        "pattern": _pattern,
        "patternProperties": _pattern_properties,
        "additionalProperties": _additional_properties,
    },
)


def unsafe_keywords(
    schema: Any, path: tuple[str | int, ...] = ()
) -> Iterator[tuple[str | int, ...]]:
    """Where a schema combines ``unevaluatedProperties`` with ``patternProperties`` (which
    jsonschema would match with ``re``)."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(schema, path)]
    while stack:
        node, where = stack.pop()
        if isinstance(node, dict):
            if "unevaluatedProperties" in node and _has_pattern_properties(node):
                yield where
            stack.extend((value, (*where, key)) for key, value in node.items())
        elif isinstance(node, list):
            stack.extend((value, (*where, index)) for index, value in enumerate(node))


def _has_pattern_properties(node: Any) -> bool:
    if isinstance(node, dict):
        return "patternProperties" in node or any(
            _has_pattern_properties(value) for value in node.values()
        )
    if isinstance(node, list):
        return any(_has_pattern_properties(value) for value in node)
    return False
