"""The one way an option's value is checked: each option is checked once, where the object that owns it is
built, by these rules, and a bad value is one ``ConfigError`` naming the option as the user writes it."""

from __future__ import annotations

import collections.abc
import difflib
import inspect
import types
import typing
from collections.abc import Callable, Collection, Mapping
from typing import Any, TypeVar

from twotower.errors import ConfigError

T = TypeVar("T")

AUTO = "auto"  # the value of an option the run chooses from its own data


def is_integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def integer(option: str, value: object, minimum: int | None = None, maximum: int | None = None, *,
            optional: bool = False, meaning_of_null: str = "", also: tuple[int, str] | None = None) -> int | None:
    """An integer of at least ``minimum`` and at most ``maximum``; None where ``optional`` (``meaning_of_null``
    says what null does); ``also``: one more value allowed outside the bounds and what it means
    (``(-1, "every core")``)."""
    if value is None and optional:
        return None
    within = (minimum is None or value >= minimum) and (maximum is None or value <= maximum) if is_integer(value) \
        else False
    if is_integer(value) and (within or (also is not None and value == also[0])):
        return value
    wanted = "an integer" + (f" between {minimum} and {maximum}" if minimum is not None and maximum is not None
                             else f" >= {minimum}" if minimum is not None else "")
    extras = [f"{also[0]}: {also[1]}"] if also else []
    extras += [f"null: {meaning_of_null}" if meaning_of_null else "null"] if optional else []
    raise ConfigError(f"{option} must be {wanted}" + (f" (or {', or '.join(extras)})" if extras else "")
                      + f", got {value!r}")


def auto_or(option: str, value: object, check: Callable[[str, object], object]) -> object:
    """``auto``, or a value ``check`` accepts (its refusal then names ``auto`` too)."""
    if value == AUTO:
        return value
    try:
        return check(option, value)
    except ConfigError as error:
        raise ConfigError(str(error).replace(f"{option} must be ", f"{option} must be auto or ", 1)) from None


def number(option: str, value: object, *, above: float | None = None, at_least: float | None = None,
           below: float | None = None, at_most: float | None = None, optional: bool = False,
           meaning_of_null: str = "") -> float | None:
    """A number within the bounds given (``above``/``below`` exclusive, ``at_least``/``at_most`` inclusive)."""
    if value is None and optional:
        return None
    bounds = [(above, ">", lambda v, b: v > b), (at_least, ">=", lambda v, b: v >= b),
              (below, "<", lambda v, b: v < b), (at_most, "<=", lambda v, b: v <= b)]
    if is_number(value) and all(bound is None or holds(value, bound) for bound, _, holds in bounds):
        return value
    said = " and ".join(f"{sign} {bound:g}" for bound, sign, _ in bounds if bound is not None)
    null = f" (or null: {meaning_of_null})" if optional and meaning_of_null else " (or null)" if optional else ""
    raise ConfigError(f"{option} must be a number{' ' + said if said else ''}{null}, got {value!r}")


def choice(option: str, value: T, choices: Collection[T]) -> T:
    """One of ``choices``."""
    if value in choices:
        return value
    raise ConfigError(f"{option} must be one of {', '.join(map(str, choices))}; got {value!r}")


def flag(option: str, value: object) -> bool:
    """true or false."""
    if isinstance(value, bool):
        return value
    raise ConfigError(f"{option} must be true or false, got {value!r}")


def arguments(prefix: str, target: Callable[..., Any], values: Mapping[str, Any]) -> None:
    """Values from the config for ``target``'s parameters, checked against its signature before it is called:
    an option it does not take (with the nearest name it does take) or a value of the wrong kind (a word where
    a number or a boolean belongs) is one ``ConfigError`` naming the option, never a traceback from inside."""
    signature = inspect.signature(target)
    parameters = signature.parameters
    if not any(parameter.kind is parameter.VAR_KEYWORD for parameter in parameters.values()):
        for name in values:
            if name not in parameters:
                near = difflib.get_close_matches(name, list(parameters), n=1)
                hint = f"did you mean {prefix}.{near[0]}?" if near else f"it takes {sorted(parameters)}"
                raise ConfigError(f"{prefix}.{name} is not an option of {getattr(target, '__name__', target)}: "
                                  f"{hint} (or drop it with ~{prefix}.{name})")
    try:
        hints = typing.get_type_hints(target.__init__ if inspect.isclass(target) else target)
    except Exception:  # annotations that do not resolve here: nothing to check them against
        return
    for name, value in values.items():
        if name in hints and not conforms(value, hints[name]):
            raise ConfigError(f"{prefix}.{name} must be {describe(hints[name])}, got {value!r}")


def conforms(value: Any, hint: Any) -> bool:
    """Whether a plain config value fits a type hint (the hints the package's constructors use)."""
    origin, parameters = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or hint is object:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(conforms(value, option) for option in parameters)
    if hint is type(None):
        return value is None
    if origin is typing.Literal:
        return value in parameters
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return is_integer(value)
    if hint is float:
        return is_number(value)
    if hint is str:
        return isinstance(value, str)
    if origin in (collections.abc.Sequence, list, tuple):
        return isinstance(value, (list, tuple)) and (not parameters or (parameters[-1] is Ellipsis and
                                                      all(conforms(v, parameters[0]) for v in value)) or
                                                      all(conforms(v, parameters[0]) for v in value))
    if origin in (collections.abc.Mapping, dict):
        return isinstance(value, Mapping)
    return True  # a kind these checks do not know (a callable, a class): left to the target


def describe(hint: Any) -> str:
    """A type hint in words: ``true or false``, ``an integer``, ``a number or null``."""
    origin, parameters = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(option) for option in parameters)
    if origin is typing.Literal:
        return "one of " + ", ".join(map(str, parameters))
    words = {bool: "true or false", int: "an integer", float: "a number", str: "a text", type(None): "null"}
    if hint in words:
        return words[hint]
    if origin in (collections.abc.Sequence, list, tuple):
        return "a list"
    if origin in (collections.abc.Mapping, dict):
        return "a mapping of names to values"
    return str(hint)


def instantiate(prefix: str, node: Any, **given: Any) -> Any:
    """``hydra.utils.instantiate(node, **given)`` for the config node at ``prefix`` (``data``, ``index``), its
    own values checked first (``arguments``)."""
    from hydra.utils import get_object
    from hydra.utils import instantiate as build
    from omegaconf import DictConfig, OmegaConf

    values = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    target = values.get("_target_")
    try:
        target = get_object(target) if isinstance(target, str) else None
    except Exception:  # Hydra's import error, whatever its type
        raise ConfigError(f"{prefix}: cannot import {values.get('_target_')!r}") from None
    if target is not None:
        arguments(prefix, target, {k: v for k, v in values.items() if not k.startswith("_") and k not in given})
    return build(node, **given)
