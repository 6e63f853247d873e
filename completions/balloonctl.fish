# fish completion for balloonctl (generated: balloonctl completion fish)
function __balloonctl_complete
    env _BALLOONCTL_COMPLETE=complete_fish _TYPER_COMPLETE_FISH_ACTION=$argv[1] \
        _TYPER_COMPLETE_ARGS=(commandline -cp) balloonctl 2>/dev/null
end
complete --command balloonctl --no-files \
    --arguments "(__balloonctl_complete get-args)" \
    --condition "__balloonctl_complete is-args"
