"""Config value types: each config field's value checked against its annotation, the field named on error.

:mod:`distilvpr_lib.config` coerces every value it sets (profiles, overrides, a loaded ``config.json``) with
:func:`coerce_value`; a wrong type is a :class:`ConfigValueError` naming the field (``model.cloud_dim:
expected an integer, got 32.5 (float)``). It imports nothing of the library but the errors.
"""

from __future__ import annotations

import functools
import math
import os
import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any

from distilvpr_lib.errors import OptionError, UnknownNameError


class ConfigValueError(OptionError):
    """A config value of the wrong type or out of range; the message names the field (``train.epochs``).

    An :class:`~distilvpr_lib.errors.OptionError` (exit status 2, also a ``ValueError``) when it comes from
    options or notebook parameters; :meth:`ExperimentConfig.load` turns it into a ``DataFormatError``
    naming the ``config.json``.
    """


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """The resolved type annotations of a config dataclass (``int``, ``str | None``, ``tuple[int, ...]``...)."""
    return typing.get_type_hints(cls)


def describe_value(value: Any) -> str:
    """``32.5 (float)``: a value and its type, for messages."""
    return f"{value!r} ({type(value).__name__})"


def coerce_value(value: Any, hint: Any, where: str, current: Any = None) -> Any:
    """``value`` as the type ``hint`` of field ``where``, or :class:`ConfigValueError` naming the field.

    Accepted conversions: an integral float (``32.0``) or a decimal string for an ``int``; an int or a
    number string for a ``float``; ``true/false/1/0/yes/no`` strings for a ``bool``; lists, and ``_``- or
    ``,``-separated strings, for tuples; ``None`` only where the field may be ``None``.
    """
    if isinstance(value, os.PathLike):  # a resolved path parameter (distilvpr_lib.paths.project_path)
        value = os.fspath(value)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return coerce_value(value, options[0], where, current)
        return value
    if value is None:
        raise ConfigValueError(f"{where}: expected {getattr(hint, '__name__', hint)}, got None")
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in {"true", "1", "yes"}:
            return True
        if isinstance(value, str) and value.strip().lower() in {"false", "0", "no"}:
            return False
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigValueError(f"{where}: expected a boolean (true/false), got {describe_value(value)}")
    if hint is int:
        if isinstance(value, bool):
            raise ConfigValueError(f"{where}: expected an integer, got {describe_value(value)}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                number = math.nan
            if math.isfinite(number) and number.is_integer():
                return int(number)
        raise ConfigValueError(f"{where}: expected an integer, got {describe_value(value)}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise ConfigValueError(f"{where}: expected a number, got {describe_value(value)}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigValueError(f"{where}: expected a string, got {describe_value(value)}")
    if origin is tuple:
        if isinstance(value, str):
            value = [p for p in value.replace(",", "_").split("_") if p.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigValueError(f"{where}: expected a list, got {describe_value(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            element_types = [args[0]] * len(value)
        else:
            element_types = list(args)
            if len(value) != len(element_types):
                raise ConfigValueError(f"{where}: expected {len(element_types)} values, got {len(value)} "
                                       f"({list(value)!r})")
        return tuple(coerce_value(v, t, f"{where}[{i}]", None) for i, (v, t) in enumerate(zip(value, element_types)))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigValueError(f"{where}: expected a mapping of names to values, got {describe_value(value)}")
        key_type, value_type = args if len(args) == 2 else (str, Any)
        return {coerce_value(k, key_type, f"{where} key", None): coerce_value(v, value_type, f"{where}[{k!r}]", None)
                for k, v in value.items()}
    return value


def update_section(obj: Any, values: Any, section: str, strict: bool = False) -> None:
    """Set the fields ``values`` of one section, each coerced to its annotated type.

    ``None`` for a field that may not be ``None`` keeps its value, except with ``strict`` (a saved config),
    where it is an error.

    Raises:
        ConfigValueError: ``values`` is not a mapping, or a value of the wrong type (the field named).
        UnknownNameError: (a KeyError) an unknown field.
    """
    if not isinstance(values, Mapping):
        raise ConfigValueError(f"{section}: expected a section (a mapping of field names to values), "
                               f"got {describe_value(values)}")
    names = {f.name: f for f in dataclasses.fields(obj)}
    hints = field_types(type(obj))
    for name, value in values.items():
        if name not in names:
            raise UnknownNameError(f"unknown field {name!r} in config section {section!r}; known: {sorted(names)}")
        hint = hints[name]
        optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint)
        if value is None and not optional and not strict:
            continue
        setattr(obj, name, coerce_value(value, hint, f"{section}.{name}", getattr(obj, name)))


__all__ = ["ConfigValueError", "coerce_value", "describe_value", "field_types", "update_section"]
