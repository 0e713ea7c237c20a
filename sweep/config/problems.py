"""A pydantic ValidationError as lines, one per problem, each with its field path."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from sweep.config.families import _UNIONS


def _field_path(loc: tuple[Any, ...]) -> str:
    # pydantic puts union member names ("FloatRange", "list[float]") and tags into loc; drop them
    parts = [str(p) for i, p in enumerate(loc)
             if not (isinstance(p, str) and ("[" in p or p[:1].isupper())) and not _is_tag(loc, i)]
    return ".".join(parts) if parts else "(top level)"


def _is_tag(loc: tuple[Any, ...], i: int) -> bool:
    """Whether loc[i] is the name of a member of a union, which pydantic put after the union's field."""
    return i > 0 and loc[i - 1] in _UNIONS and loc[i] in _UNIONS[loc[i - 1]].names


def _message(err: dict[str, Any]) -> str:
    msg = err["msg"].removeprefix("Value error, ")
    got = err.get("input")
    if err["type"] == "extra_forbidden":
        loc = err["loc"]
        owners = _UNIONS[loc[-3]].owners.get(loc[-1]) if len(loc) >= 3 and _is_tag(loc, len(loc) - 2) else None
        if owners:  # a field of another member of the union
            return f"applies to {loc[-3]} {' or '.join(map(repr, owners))} only, not {loc[-2]!r}; remove it"
        return f"unknown key {loc[-1]!r}; check the spelling against the documented study keys"
    if err["type"] in ("missing", "union_tag_not_found"):
        return "required field is missing"
    if err["type"] == "union_tag_invalid":  # an unknown name, said as a Literal field says it
        first, last = err["ctx"]["expected_tags"].rsplit(", ", 1)
        return f"Input should be {first} or {last}, got {got[_tag(err)]!r}"
    if err["type"] == "model_attributes_type":
        return f"Input should be a valid dictionary, got {got!r}"
    if err["type"] in ("value_error", "assertion_error") or isinstance(got, dict):
        return msg
    return f"{msg}, got {got!r}"


def _tag(err: dict[str, Any]) -> str:
    return str(err["ctx"]["discriminator"]).strip("'")  # pydantic quotes it: "'name'"


def _where(err: dict[str, Any]) -> str:
    """The field path of an error; a union's missing or unknown name is said at `name`."""
    if err["type"] in ("union_tag_not_found", "union_tag_invalid"):
        return _field_path((*err["loc"], _tag(err)))
    return _field_path(err["loc"])


# a dict given where a union also allows a list (or vice versa) fails the other member with a
# type error; it says nothing useful when the member of the right type has a real complaint
_TYPE_ONLY = {"list_type", "dict_type", "model_type", "model_attributes_type"}


def validation_problems(exc: ValidationError) -> list[str]:
    """One line per problem, its field path first (for sweep.settings too)."""
    errors = exc.errors()
    real = {_where(e) for e in errors if e["type"] not in _TYPE_ONLY}
    seen: dict[str, list[str]] = {}
    for err in errors:
        path = _where(err)
        if err["type"] in _TYPE_ONLY and path in real:
            continue
        seen.setdefault(path, [])
        m = _message(err)
        if m not in seen[path]:
            seen[path].append(m)
    out = []
    for path, msgs in seen.items():
        # a value failing every member of a union yields one message per member; keep them together
        out.append(f"{path}: {' | '.join(msgs)}")
    return out
