"""The root click group: one ``balloonctl: error: ...`` line and an exit code for whatever a
command raises, and global options accepted after the command name."""

from __future__ import annotations

import importlib
import logging
import sys
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import typer
from typer._click import exceptions as click_exceptions
from typer.core import TyperGroup

from balloonctl.cli.common import StdoutClosed, report_error, settings, silence_stdout
from balloonctl.cli.exitcodes import ExitCode, exit_code_for
from balloonctl.cli.output import WarningLines, error
from balloonctl.cli.params import tune
from balloonctl.errors import BalloonError

__all__ = ["BalloonGroup", "Lazy"]

_QUIET = logging.NullHandler()
_WARNINGS = WarningLines()


@dataclass(frozen=True)
class Lazy:
    """A command whose module is imported when the command is first looked up: ``attr`` in
    ``module`` is a typer command function, or a ``typer.Typer`` sub-app when ``group``."""

    module: str
    attr: str
    group: bool = False
    help: str | None = None
    context_settings: dict[str, Any] = field(default_factory=dict)

    def load(self, name: str) -> Any:
        target = getattr(importlib.import_module(self.module), self.attr)
        command: Any
        if self.group:
            command = typer.main.get_group(target)
        else:
            one = typer.Typer(add_completion=False, rich_markup_mode=None,
                              pretty_exceptions_enable=False)
            one.command(name, help=self.help, context_settings=self.context_settings or None)(
                target)
            command = typer.main.get_command(one)
        command.name = name
        return command


class BalloonGroup(TyperGroup):
    """Formats every failure as one ``balloonctl: error: ...`` line and picks the exit code
    (typer would draw a box around usage errors and print tracebacks). Its parameters, and
    its commands', coerce without pydantic (``params.tune``)."""

    lazy: ClassVar[dict[str, Lazy]] = {}  # app.py fills it: name -> where the command lives

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        tune(self)

    def list_commands(self, ctx: Any) -> list[str]:
        return [*self.lazy, *(n for n in super().list_commands(ctx) if n not in self.lazy)]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        return self.resolve(cmd_name)

    def resolve(self, name: str) -> Any:
        """The command called ``name`` (imported and built on first use), or None."""
        command = self.commands.get(name)
        if command is None and name in self.lazy:
            command = self.lazy[name].load(name)
            tune(command, help_names=list(
                self.context_settings.get("help_option_names", ["--help"])))
            self.commands[name] = command
        return command

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        # qemu.qmp logs failures it also raises; balloonctl reports them once, as one line
        logging.getLogger("qemu").addHandler(_QUIET)
        logging.getLogger("balloonctl").addHandler(_WARNINGS)  # e.g. an unusable state file
        try:
            rv = super().main(args=args, prog_name=prog_name or "balloonctl",
                              complete_var=complete_var, standalone_mode=False, **extra)
            code = int(rv) if isinstance(rv, int) else ExitCode.OK
        except click_exceptions.NoArgsIsHelpError as exc:  # bare `balloonctl`: the help
            print(exc.format_message())
            code = ExitCode.USAGE
        except click_exceptions.ClickException as exc:
            # typer validates choices with pydantic, whose messages start "Value error, "
            message = exc.format_message().replace("Value error, ", "", 1)
            ctx = getattr(exc, "ctx", None)
            if isinstance(exc, click_exceptions.UsageError) and ctx is not None:
                message += f" (see '{ctx.command_path} --help')"
            error(message)
            code = ExitCode.USAGE if exc.exit_code == 2 else exc.exit_code
        except typer.Abort:
            code = ExitCode.INTERRUPTED
        except StdoutClosed:
            code = ExitCode.OK
        except BrokenPipeError:  # a write outside ``common.out``: the same, quietly
            silence_stdout()
            code = ExitCode.OK
        except BalloonError as exc:
            report_error(exc)
            code = exit_code_for(exc)
        except KeyboardInterrupt:
            code = ExitCode.INTERRUPTED
        except Exception as exc:  # a bug: still one line, the traceback only with -v
            if settings().verbose:
                traceback.print_exc()
            error(f"internal error: {type(exc).__name__}: {exc}")
            code = ExitCode.FAILURE
        if standalone_mode:
            sys.exit(code)
        return code


    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        return super().parse_args(ctx, _hoist_global_options(self, args))


def _options(params: Sequence[Any]) -> dict[str, Any]:
    """A command's options by every name they answer to (``--dir``, ``-v``)."""
    return {name: p for p in params if getattr(p, "param_type_name", None) == "option"
            for name in (*p.opts, *p.secondary_opts)}


def _words(option: Any, word: str) -> int:
    """How many words an option occupies: 1 for a flag or ``--opt=value``, else 2."""
    if "=" in word or getattr(option, "is_flag", False) or getattr(option, "count", False):
        return 1
    return 2


def _hoist_global_options(group: TyperGroup, args: Sequence[str]) -> list[str]:
    """``balloonctl status --dir X`` as ``balloonctl --dir X status``: a global option given
    after the command moves before it, unless the command has an option of that name itself
    (``set --timeout``, ``fake --dir``). ``--`` ends the search."""
    args = list(args)
    globals_ = {n: p for n, p in _options(group.params).items() if p.name != "version"}
    i = 0
    while i < len(args) and args[i].startswith("-") and args[i] != "--":
        found = globals_.get(args[i].split("=", 1)[0])
        i += 1 if found is None else _words(found, args[i])
    resolve = getattr(group, "resolve", group.commands.get)
    command = resolve(args[i]) if i < len(args) else None
    if command is None:
        return args
    own = _options(command.params)
    head, tail = args[:i], [args[i]]
    j = i + 1
    while j < len(args):
        word = args[j]
        if word == "--":
            tail += args[j:]
            break
        name = word.split("=", 1)[0]
        if name in own:
            n = _words(own[name], word)
            tail += args[j:j + n]
        elif name in globals_ and word.startswith("-"):
            n = _words(globals_[name], word)
            head += args[j:j + n]
        else:
            n = 1
            tail.append(word)
        j += n
    return head + tail



