"""How balloonctl's typer parameters coerce their values and show themselves in help.

typer 0.29 coerces every parameter value through a pydantic ``TypeAdapter``, which costs a
pydantic import (a third of ``status``'s start-up) on every call. balloonctl's parameters are
all plain: ``str``, ``int``/``float`` with bounds, ``Path``, an ``Enum`` of choices, lists of
``str``. ``tune`` gives such parameters a coercion of the same meaning that needs no pydantic;
anything else keeps typer's own. It also drops typer's type labels from help
(``VM <list[str]>``, ``--prefix <str>``): the metavar says what to type; choices stay.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args, get_origin

from typer._click.core import Command, Context
from typer._click.exceptions import BadParameter
from typer._coercion import RuntimeParam
from typer._param_types import coerce_cli_choice
from typer.core import TyperArgument, TyperOption

__all__ = ["tune"]

_PLAIN = (str, int, float, bool, Path)
_BOOLS = {"1": True, "true": True, "yes": True, "on": True, "y": True, "t": True,
          "0": False, "false": False, "no": False, "off": False, "n": False, "f": False}


def _leaf(annotation: Any) -> Any | None:
    """The element type of ``annotation`` when it is one ``_PlainParam`` handles, else None."""
    if get_origin(annotation) is list:
        args = get_args(annotation)
        return str if args == (str,) else None
    if annotation in _PLAIN or (isinstance(annotation, type) and issubclass(annotation, enum.Enum)):
        return annotation
    return None


@dataclass(frozen=True)
class _PlainParam(RuntimeParam):
    """typer's coercion for the plain types, without pydantic (same results, same bounds)."""

    def _coerce_value(self, value: Any, param: Any, ctx: Context) -> Any:
        annotation: Any = self.annotation
        if get_origin(annotation) is list:
            items = value if isinstance(value, (list, tuple)) else [value]
            return [str(v) for v in items]
        return self._one(annotation, value, param, ctx)

    def _one(self, kind: Any, value: Any, param: Any, ctx: Context) -> Any:
        info = self.parameter_info
        if isinstance(kind, type) and issubclass(kind, enum.Enum):
            try:
                return coerce_cli_choice(value, choices=list(kind),
                                         case_sensitive=info.case_sensitive, ctx=ctx)
            except ValueError as exc:
                raise BadParameter(str(exc), ctx=ctx, param=param) from None
        if kind is str:
            return str(value)
        if kind is bool:
            if isinstance(value, bool):
                return value
            found = _BOOLS.get(str(value).strip().lower())
            if found is None:
                raise BadParameter(f"Input should be a boolean, got {value!r}", ctx=ctx,
                                   param=param)
            return found
        if kind is Path:
            return value if isinstance(value, Path) else Path(value)
        number: int | float
        try:
            number = int(str(value).strip(), 10) if kind is int else float(str(value).strip())
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise BadParameter(f"Input should be {what}, got {value!r}", ctx=ctx,
                               param=param) from None
        if not math.isfinite(number):
            raise BadParameter(f"Input should be a finite number, got {value!r}", ctx=ctx,
                               param=param)
        if info.min is not None and number < info.min:
            raise BadParameter(f"Input should be greater than or equal to {info.min}",
                               ctx=ctx, param=param)
        if info.max is not None and number > info.max:
            raise BadParameter(f"Input should be less than or equal to {info.max}",
                               ctx=ctx, param=param)
        return number


def _unwrap_optional(annotation: Any) -> Any:
    args = [a for a in get_args(annotation) if a is not type(None)]
    if len(args) == 1 and type(None) in get_args(annotation):
        return args[0]
    return annotation


class _Argument(TyperArgument):
    def display_type_rich(self, ctx: Context) -> str:
        # the metavar says it (VM, VM... SIZE); only choices are worth showing
        return (super().display_type_rich(ctx) or "") if self.type_descriptor.is_choice else ""


def _tune_param(param: Any) -> None:
    if isinstance(param, TyperArgument):
        param.__class__ = _Argument
    elif not isinstance(param, TyperOption):
        return
    descriptor = param.type_descriptor
    annotation = _unwrap_optional(descriptor.annotation)
    if (descriptor.file_annotation is None and descriptor.parameter_info.parser is None
            and _leaf(annotation) is not None):
        param._runtime_param = _PlainParam(parameter_info=descriptor.parameter_info,
                                           annotation=annotation)


def tune(command: Command, *, help_names: list[str] | None = None) -> None:
    """Tune every parameter of ``command`` and of its subcommands, in place (see the module
    docstring), including the help option click makes (and keeps) on first use. Idempotent.
    """
    if help_names is None:
        help_names = list(command.context_settings.get("help_option_names", ["--help"]))
    help_option = command.get_help_option(Context(command, help_option_names=help_names))
    for param in [*command.params, *([help_option] if help_option else [])]:
        _tune_param(param)
    for sub in getattr(command, "commands", {}).values():
        tune(sub, help_names=help_names)
