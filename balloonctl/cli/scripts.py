"""The shell completion scripts: ``balloonctl completion bash|zsh|fish`` prints them and
``completions/`` holds them, generated.

Each script asks ``balloonctl`` itself for candidates through the same environment protocol
typer uses (``_BALLOONCTL_COMPLETE=complete_bash`` with ``COMP_WORDS``/``COMP_CWORD``;
``complete_zsh``/``complete_fish`` with ``_TYPER_COMPLETE_ARGS``), which ``fastcomplete``
answers without importing typer.
"""

from __future__ import annotations

__all__ = ["FILENAMES", "SHELLS", "script"]

SHELLS = ("bash", "zsh", "fish")
# Where each script goes in completions/ (and what the shells look for).
FILENAMES = {"bash": "balloonctl.bash", "zsh": "_balloonctl", "fish": "balloonctl.fish"}

_BASH = """\
# bash completion for balloonctl (generated: balloonctl completion bash)
_balloonctl_complete() {
    local IFS=$'\\n'
    COMPREPLY=($(env COMP_WORDS="${COMP_WORDS[*]}" COMP_CWORD="$COMP_CWORD" \\
        _BALLOONCTL_COMPLETE=complete_bash "$1" 2>/dev/null))
    return 0
}
complete -o default -F _balloonctl_complete balloonctl
"""

_ZSH = """\
#compdef balloonctl
# zsh completion for balloonctl (generated: balloonctl completion zsh)
_balloonctl() {
    eval "$(env _TYPER_COMPLETE_ARGS="${words[1,$CURRENT]}" \\
        _BALLOONCTL_COMPLETE=complete_zsh balloonctl 2>/dev/null)"
}
if [[ "${zsh_eval_context[-1]}" == loadautofunc ]]; then
    _balloonctl "$@"
else
    compdef _balloonctl balloonctl
fi
"""

_FISH = """\
# fish completion for balloonctl (generated: balloonctl completion fish)
function __balloonctl_complete
    env _BALLOONCTL_COMPLETE=complete_fish _TYPER_COMPLETE_FISH_ACTION=$argv[1] \\
        _TYPER_COMPLETE_ARGS=(commandline -cp) balloonctl 2>/dev/null
end
complete --command balloonctl --no-files \\
    --arguments "(__balloonctl_complete get-args)" \\
    --condition "__balloonctl_complete is-args"
"""

_SCRIPTS = {"bash": _BASH, "zsh": _ZSH, "fish": _FISH}


def script(shell: str) -> str:
    """The completion script for ``shell``.

    Raises:
        KeyError: not bash, zsh or fish.
    """
    return _SCRIPTS[shell]
