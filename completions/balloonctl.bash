# bash completion for balloonctl (generated: balloonctl completion bash)
_balloonctl_complete() {
    local IFS=$'\n'
    COMPREPLY=($(env COMP_WORDS="${COMP_WORDS[*]}" COMP_CWORD="$COMP_CWORD" \
        _BALLOONCTL_COMPLETE=complete_bash "$1" 2>/dev/null))
    return 0
}
complete -o default -F _balloonctl_complete balloonctl
