# completion.bash -- bash completion for memprof and memprofd (installed as both completions/memprof and /memprofd).
# The option names and choice words here are checked against each command's --help and its own list of choices
# (what `--OPT bogus` says it needs) by tests/test_install.py: change them together with common/opts.c tables.

# Pids of running Python processes (comm python*), for --pid.
_memprof_python_pids()
{
    local f comm
    for f in /proc/[0-9]*/comm; do
        read -r comm 2>/dev/null <"$f" || continue
        case $comm in python*) f=${f#/proc/}; printf '%s\n' "${f%/comm}" ;; esac
    done
}

# Session ids of the running daemon (never starts one: status does not).
_memprof_session_ids()
{
    local sock=()
    [[ -n $1 ]] && sock=(--socket "$1")
    memprof status --json "${sock[@]}" 2>/dev/null | grep -o '"id": [0-9]*' | grep -o '[0-9]*'
}

# Complete files (bash-completion's _filedir when loaded, else compgen -f).
_memprof_files()
{
    if declare -F _filedir >/dev/null; then
        _filedir "$@"
    else
        local IFS=$'\n'
        COMPREPLY=($(compgen -f -- "$cur"))
    fi
}

# Sets COMPREPLY for an option's value; returns 1 when prev takes none.
_memprof_value()
{
    local prev=$1 cmd=$2 sock=$3
    case $prev in
        --pid) COMPREPLY=($(compgen -W "$(_memprof_python_pids)" -- "$cur")) ;;
        --session) COMPREPLY=($(compgen -W "$(_memprof_session_ids "$sock")" -- "$cur")) ;;
        --by)
            if [[ $cmd == rss ]]; then COMPREPLY=($(compgen -W "line function native mapping" -- "$cur"))
            else COMPREPLY=($(compgen -W "function line" -- "$cur")); fi ;;
        --sort) COMPREPLY=($(compgen -W "count size" -- "$cur")) ;;
        --format)
            if [[ $cmd == plot ]]; then COMPREPLY=($(compgen -W "svg" -- "$cur"))
            else COMPREPLY=($(compgen -W "json collapsed pprof speedscope" -- "$cur")); fi ;;
        --method) COMPREPLY=($(compgen -W "auto ptrace remote-exec" -- "$cur")) ;;
        --agent) _memprof_files so ;;
        --socket | -o | --output | --file | --save | --rss | --http-token-file | --watch-file) _memprof_files ;;
        --watch) COMPREPLY=($(compgen -W "command= user= container= pod= namespace=" -- "$cur")); compopt -o nospace 2>/dev/null ;;
        --function | --type | --addr | --limit | --interval | --count | --max-depth | --too-many | --max-start | \
            --window | --title | --sample-rate | --max-frames | --duration | --sample | --http | \
            --metrics-top | --watch-max) COMPREPLY=() ;;
        *) return 1 ;;
    esac
    return 0
}

_memprof()
{
    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]} cmd="" sock="" i opts
    COMPREPLY=()
    for ((i = 1; i < COMP_CWORD; i++)); do
        [[ -z $cmd && ${COMP_WORDS[i]} != -* ]] && cmd=${COMP_WORDS[i]}
        [[ ${COMP_WORDS[i]} == --socket ]] && sock=${COMP_WORDS[i+1]}
        # memprof run ... -- PROGRAM ARGS: complete the program's command line.
        if [[ $cmd == run && ${COMP_WORDS[i]} == -- ]]; then
            if declare -F _command_offset >/dev/null; then _command_offset $((i + 1))
            elif ((i + 1 == COMP_CWORD)); then COMPREPLY=($(compgen -c -- "$cur"))
            else _memprof_files; fi
            return 0
        fi
    done
    if [[ -z $cmd ]]; then
        COMPREPLY=($(compgen -W "run status ps types growth backrefs chain top lines snapshot diff plot export flamegraph rss
                                 ipython-path help --help --version" -- "$cur"))
        return 0
    fi
    _memprof_value "$prev" "$cmd" "$sock" && return 0
    case $cmd in
        run) opts="--function --exact --native --native-frames --sample-rate --max-frames --follow-fork -o --output --socket --" ;;
        status | ps) opts="--json --socket" ;;
        types) opts="--pid --limit --sort --long --all --json --socket" ;;
        growth) opts="--pid --interval --limit --count --all --json --socket" ;;
        backrefs) opts="--pid --type --addr -o --output --max-depth --too-many --max-start --socket" ;;
        chain) opts="--pid --type --addr --max-depth --socket" ;;
        top) opts="--pid --by --once --json --limit --interval --no-fold --libraries --native-only --socket" ;;
        lines) opts="--pid --function --file --native-only --socket" ;;
        snapshot) opts="--pid -o --output --socket" ;;
        diff) opts="--pid --window --session --limit --socket" ;;
        plot) opts="--pid --session --rss -o --output --title --format --socket" ;;
        export) opts="--pid --session --rss --format -o --output --allocated --socket" ;;
        flamegraph) opts="--pid --session -o --output --allocated --socket" ;;
        rss) opts="--pid --once --json --duration --interval --by --sample --rss-stat --limit --save --socket --check" ;;
        ipython-path) opts="" ;;
        *) return 0 ;;
    esac
    if [[ $cur == -* || $cmd != diff ]]; then
        COMPREPLY=($(compgen -W "$opts --help" -- "$cur"))
    else
        _memprof_files # memprof diff A B: two snapshot files
    fi
    return 0
}

_memprofd()
{
    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]} cmd="" i opts
    COMPREPLY=()
    for ((i = 1; i < COMP_CWORD; i++)); do
        [[ -z $cmd && ${COMP_WORDS[i]} != -* ]] && cmd=${COMP_WORDS[i]}
    done
    if [[ -z $cmd ]]; then
        COMPREPLY=($(compgen -W "serve attach detach stop help --help --version" -- "$cur"))
        return 0
    fi
    _memprof_value "$prev" "$cmd" "" && return 0
    case $cmd in
        serve) opts="--socket --agent --http --http-allow-remote --http-token-file --metrics-top --watch --watch-file --watch-max" ;;
        attach) opts="--pid --sample-rate --exact --max-frames --interval --no-track --method --native --native-frames --socket" ;;
        detach) opts="--pid --socket" ;;
        stop) opts="--socket" ;;
        *) return 0 ;;
    esac
    COMPREPLY=($(compgen -W "$opts --help" -- "$cur"))
    return 0
}

complete -F _memprof memprof
complete -F _memprofd memprofd
