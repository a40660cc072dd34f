"""The one way an option's value is checked: each option is checked once, where the object that owns it is
built, by these rules, and a bad value is one ``ConfigError`` naming the option as the user writes it."""

from __future__ import annotations

from collections.abc import Collection
from typing import TypeVar

from twotower.errors import ConfigError

T = TypeVar("T")


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
