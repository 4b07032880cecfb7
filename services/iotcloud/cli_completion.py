"""``iotcloud completion bash``: a completion script written from the parser itself, so it
always knows every command and option."""

from __future__ import annotations

import argparse


def _words(parser: argparse.ArgumentParser, path: str, table: dict[str, list[str]]) -> None:
    words: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                words.append(name)
                _words(child, f"{path} {name}".strip(), table)
        else:
            words += [option for option in action.option_strings if option.startswith("--")]
            if action.choices and not action.option_strings:
                words += [str(choice) for choice in action.choices]
    table[path] = words


def bash_script(parser: argparse.ArgumentParser) -> str:
    table: dict[str, list[str]] = {}
    _words(parser, "", table)
    cases = "\n".join(
        f'        "{path}") words="{" ".join(words)}" ;;' for path, words in sorted(table.items())
    )
    return f"""# bash completion for iotcloud (iotcloud completion bash)
_iotcloud() {{
    local cur path="" word words
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    for word in "${{COMP_WORDS[@]:1:COMP_CWORD-1}}"; do
        case "$word" in -*) ;; *) [[ -n "$(_iotcloud_words "${{path:+$path }}$word")" ]] \\
            && path="${{path:+$path }}$word" ;; esac
    done
    words="$(_iotcloud_words "$path")"
    COMPREPLY=( $(compgen -W "$words" -- "$cur") )
}}
_iotcloud_words() {{
    local words=""
    case "$1" in
{cases}
    esac
    echo "$words"
}}
complete -F _iotcloud iotcloud
"""


def cmd_completion(args: argparse.Namespace) -> None:
    from iotcloud.cli import build_parser

    print(bash_script(build_parser()), end="")
