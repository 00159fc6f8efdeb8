"""Shell completion: bash and zsh scripts generated from queuectl's own parser.

The script carries the command tree (every command, action and option, and what each
option's value or positional is), so completing a command or an option costs no process.
Only job ids come from the queue: the script runs `queuectl completion --ids STATES`,
which prints the newest ids of those states, one a line.

What a value is, is read from the parser: its `choices`; the dest `state` (job states) or
`key` (config keys); the metavar `ID` (job ids), `DIR` (folders), `PATH`, `FILE` or `JOB`
(files: enqueue's words are often a script to run).
"""

import argparse
import shlex

from . import config, jobs

SHELLS = ("bash", "zsh")
IDS_LIMIT = 200  # ids offered per state: enough to pick from, few enough to come back at once

# The jobs a command's IDs (and its --state) can name, where not every job can be.
ID_STATES = {
    ("cancel",): jobs.UNFINISHED_STATES,
    ("retry",): jobs.FINISHED_STATES,
    ("dlq", "retry"): (jobs.DEAD,),
    ("edit",): jobs.EDITABLE_STATES,
}


def script(shell, commands, invocation):
    """The completion script for `shell`: `commands` is (path, parser) for queuectl itself (path
    ()) and every command and action; `invocation` is the argv that runs queuectl, for the ids."""
    if shell not in SHELLS:
        raise ValueError("no completion for %r" % shell)
    specs, kinds = [], []
    for path, parser in commands:
        name = " ".join(path)
        subs, options, valued, positionals = [], [], [], []
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                subs += list(action.choices)
            elif action.help is argparse.SUPPRESS:
                continue
            elif action.option_strings:
                options += action.option_strings
                if action.nargs != 0:  # not a flag: its value is the next word
                    valued += action.option_strings
                    kinds += [(name, option, _kind(path, action)) for option in action.option_strings]
            else:
                positionals.append(action)
        specs.append((name, subs, options, valued))
        for number, action in enumerate(positionals):
            repeats = action.nargs in ("*", "+", argparse.REMAINDER)
            kinds.append((name, "[0-9]*" if repeats else str(number), _kind(path, action)))
    lines = [_HEADER % {"shell": shell}]
    lines.append("_queuectl_argv=(%s)" % " ".join(shlex.quote(word) for word in invocation))
    lines.append(_SPEC_START)
    for name, subs, options, valued in specs:
        lines.append("    %s) _qc_subs=%s _qc_opts=%s _qc_valued=%s ;;" % (
            shlex.quote(name), _words(subs), _words(options), _words(valued)))
    lines.append(_SPEC_END)
    lines.append(_KIND_START)
    for name, what, (kind, words) in kinds:
        if kind != "-":
            # A repeating positional matches any number ("[0-9]*"), after the exact ones before it.
            pattern = shlex.quote(name + "|") + (what if what == "[0-9]*" else shlex.quote(what))
            lines.append("    %s) _qc_kind=%s _qc_words=%s ;;" % (pattern, kind, _words(words)))
    lines.append(_KIND_END)
    lines.append(_CORE)
    lines.append(_BASH if shell == "bash" else _ZSH)
    return "\n".join(lines) + "\n"


def _kind(path, action):
    """(kind, words) for an option's value or a positional: w (these words), ids (job ids of
    these states, all when none), f (files), d (folders) or - (nothing to offer)."""
    if action.choices is not None:
        return "w", [str(choice) for choice in action.choices]
    if action.dest == "state":
        return "w", list(ID_STATES.get(path, jobs.STATES))
    if action.dest == "key":
        return "w", list(config.SETTINGS)
    return {"ID": ("ids", [",".join(ID_STATES.get(path, ()))]), "DIR": ("d", []), "JOB": ("f", []),
            "PATH": ("f", []), "FILE": ("f", [])}.get(action.metavar, ("-", []))


def _words(words):
    return shlex.quote(" ".join(words))


_HEADER = """\
# %(shell)s completion for queuectl, generated from its parser by `queuectl completion %(shell)s`.
# In ~/.%(shell)src: eval "$(python /path/to/queuectl.py completion %(shell)s)"
# It completes `queuectl` and `queuectl.py`; after `pip install .` the command is `queuectl`."""

_SPEC_START = """\
_queuectl_spec() {
    # $1: a command path ('' for queuectl itself, 'worker start', ...). Sets _qc_subs (its
    # commands or actions), _qc_opts (its options) and _qc_valued (those that take a value).
    case $1 in"""

_SPEC_END = """\
    *) _qc_subs='' _qc_opts='' _qc_valued='' ;;
    esac
}"""

_KIND_START = """\
_queuectl_kind() {
    # $1: a command path; $2: one of its options, or the number of a positional (0 first).
    # Sets _qc_kind (w: the words in _qc_words; ids: job ids of the states in _qc_words, all
    # when empty; f: files; d: folders; -: nothing) for that value.
    case "$1|$2" in"""

_KIND_END = """\
    *) _qc_kind=- _qc_words='' ;;
    esac
}"""

# Shared by both shells, so it keeps to what bash and zsh read alike: the words come as
# positional parameters (bash's arrays count from 0, zsh's from 1), nothing relies on word
# splitting, and no variable is named like one of zsh's (path, status, words).
_CORE = r"""
_queuectl_complete() {
    # $1: the number of the word to complete (the command name is 0), then every word typed.
    # Sets _qc_kind and _qc_words (see _queuectl_kind), _qc_cur (what is typed of the word)
    # and _qc_prefix ('--opt=' when that word is --opt=VALUE, whose VALUE is completed).
    local _qc_n=$1 _qc_i=1 _qc_w _qc_cmd='' _qc_pos=0 _qc_expect='' _qc_dd='' _qc_home=''
    shift 2
    _queuectl_spec ''
    while [ "$_qc_i" -lt "$_qc_n" ] && [ $# -gt 0 ]; do
        _qc_w=$1
        shift
        _qc_i=$((_qc_i + 1))
        if [ -n "$_qc_expect" ]; then
            # The option's value (bash makes --state=dead three words: --state, =, dead).
            [ "$_qc_w" = "=" ] && continue
            [ "$_qc_expect" = --home ] && [ -z "$_qc_cmd" ] && _qc_home=$_qc_w
            _qc_expect=''
            continue
        fi
        if [ -z "$_qc_dd" ]; then
            case $_qc_w in
                --) _qc_dd=1; continue ;;
                --home=*) [ -z "$_qc_cmd" ] && _qc_home=${_qc_w#--home=}; continue ;;
                -*=*) continue ;;
                -?*) case " $_qc_valued " in *" $_qc_w "*) _qc_expect=$_qc_w ;; esac; continue ;;
            esac
        fi
        if [ "$_qc_pos" = 0 ] && [ -n "$_qc_subs" ]; then
            # A command or action (an unknown one has no spec, so nothing more is offered).
            _qc_cmd=${_qc_cmd:+$_qc_cmd }$_qc_w
            _queuectl_spec "$_qc_cmd"
            continue
        fi
        _qc_pos=$((_qc_pos + 1))
    done
    _qc_cur=${1-} _qc_prefix='' _qc_kind=- _qc_words=''
    if [ -n "$_qc_expect" ]; then
        [ "$_qc_cur" = "=" ] && _qc_cur=''
        _queuectl_kind "$_qc_cmd" "$_qc_expect"
    else
        # After --, nothing is an option: "1" in front keeps the option patterns from matching.
        case $_qc_dd$_qc_cur in
            --*=*)
                _qc_prefix="${_qc_cur%%=*}="
                _queuectl_kind "$_qc_cmd" "${_qc_cur%%=*}"
                _qc_cur=${_qc_cur#*=} ;;
            -*) _qc_kind=w _qc_words=$_qc_opts ;;
            *)
                if [ -n "$_qc_subs" ] && [ "$_qc_pos" = 0 ]; then
                    _qc_kind=w _qc_words=$_qc_subs
                else
                    _queuectl_kind "$_qc_cmd" "$_qc_pos"
                fi ;;
        esac
    fi
    if [ "$_qc_kind" = ids ]; then
        if [ -n "$_qc_home" ]; then
            _qc_words=$("${_queuectl_argv[@]}" --home "$_qc_home" completion --ids "$_qc_words" 2>/dev/null </dev/null)
        else
            _qc_words=$("${_queuectl_argv[@]}" completion --ids "$_qc_words" 2>/dev/null </dev/null)
        fi
    fi
}"""

_BASH = r"""
_queuectl_bash() {
    local IFS=$' \t\n' _qc_id
    _queuectl_complete "$COMP_CWORD" "${COMP_WORDS[@]}"
    COMPREPLY=()
    case $_qc_kind in
        w) COMPREPLY=($(compgen -W "$_qc_words" -- "$_qc_cur")) ;;
        ids)
            # Ids are taken as they are: compgen -W would expand a $ or a quote in one.
            while IFS= read -r _qc_id; do
                case $_qc_id in "$_qc_cur"*) [ -n "$_qc_id" ] && COMPREPLY+=("$_qc_id") ;; esac
            done <<< "$_qc_words" ;;
        f) compopt -o filenames 2>/dev/null; IFS=$'\n'; COMPREPLY=($(compgen -f -- "$_qc_cur")) ;;
        d) compopt -o filenames 2>/dev/null; IFS=$'\n'; COMPREPLY=($(compgen -d -- "$_qc_cur")) ;;
    esac
    if [ -n "$_qc_prefix" ] && [ ${#COMPREPLY[@]} -gt 0 ]; then
        COMPREPLY=("${COMPREPLY[@]/#/$_qc_prefix}")
    fi
}
complete -F _queuectl_bash queuectl queuectl.py"""

_ZSH = r"""
_queuectl_zsh() {
    _queuectl_complete $((CURRENT - 1)) "${words[@]}"
    [[ -n $_qc_prefix ]] && compset -P '*='
    case $_qc_kind in
        w) compadd -- ${=_qc_words} ;;
        ids) compadd -- ${(f)_qc_words} ;;
        f) _files ;;
        d) _files -/ ;;
    esac
}
if (( ! $+functions[compdef] )); then
    autoload -Uz compinit && compinit -i
fi
compdef _queuectl_zsh queuectl queuectl.py"""
