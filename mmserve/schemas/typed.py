"""The base of the typed request models: strict pydantic v2 models, tagged unions, and the one
translation of a pydantic ValidationError into a BadRequest naming the field (`messages[0].
content[1]`, `tools[0].function.parameters`)."""

from __future__ import annotations

from typing import Annotated, Any, TypeVar, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Tag, ValidationError

from ..errors import BadRequest

M = TypeVar("M", bound=BaseModel)
_TAG_ERROR = "unknown_tag:"  # + the key


class Strict(BaseModel):
    """A request object: JSON types are not coerced ("yes" is no boolean, 1.5 no integer);
    fields this server does not know are ignored, as OpenAI's extra fields are."""

    model_config = ConfigDict(strict=True, extra="ignore", populate_by_name=True)


def tagged(key: str, members: dict[str, type]) -> Any:
    """A union chosen by the value of `key` (`type`, `role`): {value: model}. An unknown value
    is a 400 naming `<path>.<key>`. Tags are `key=value`, never mistaken for a field name."""

    def pick(value):
        raw = value.get(key) if isinstance(value, dict) else getattr(value, key, None)
        return f"{key}={raw}" if isinstance(raw, str) and raw in members else None

    choices = [Annotated[model, Tag(f"{key}={value}")] for value, model in members.items()]
    names = ", ".join(members)
    return Annotated[
        Union[tuple(choices)],  # noqa: UP007 - a runtime tuple of members
        Discriminator(
            pick,
            custom_error_type=_TAG_ERROR + key,
            custom_error_message=f"'{key}' must be one of {names}",
        ),
    ]


def _is_tag(segment: str) -> bool:
    """Union members in a pydantic `loc`: `key=value` tags, `str`, `list[...]`, class names."""
    return (
        "=" in segment
        or "[" in segment
        or segment in ("str", "int", "float", "bool", "none", "dict", "list")
        or segment[:1].isupper()
    )


def param_of(loc: tuple, error_type: str = "") -> str | None:
    """`messages[0].content[1].type` from a pydantic `loc`, union members skipped."""
    out = ""
    for segment in loc:
        if isinstance(segment, int):
            out += f"[{segment}]"
        elif not _is_tag(segment):
            out += f".{segment}" if out else segment
    if error_type.startswith(_TAG_ERROR):
        key = error_type[len(_TAG_ERROR) :]
        out += f".{key}" if out else key
    return out or None


def _message(param: str | None, error: dict) -> str:
    if error["type"].startswith(_TAG_ERROR):
        return f"'{param}' is not known: {error['msg']}"
    if error["type"] == "missing":
        return f"'{param}' is required"
    msg = error["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    return f"'{param}': {msg}" if param else msg


def validate(model: type[M], body: Any) -> M:
    """`body` as a `model`; BadRequest naming the deepest field at fault otherwise (of a union,
    the member that got furthest explains the mistake best)."""
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object", param=None)
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)

        def depth(error) -> int:
            return sum(1 for s in error["loc"] if isinstance(s, int) or not _is_tag(s))

        best = max(errors, key=depth)  # the first of the deepest
        best_param = param_of(best["loc"], best["type"])
        raise BadRequest(_message(best_param, best), param=best_param) from None
