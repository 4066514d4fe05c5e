"""Config files and command-line options: bases of config files, and errors as one line.

A config file may name a ``base:`` config (a path relative to its own folder) that is read before it, so an
experiment states only what differs from the model block it shares with others.

jsonargparse prints a 70-line usage block before a parse error, names YAML syntax errors ``"<unicode string>"``
and reports a wrong type as ``Parser key "model.k": Expected a <class 'int'>``. Here each becomes one line that
names the option or file and what was expected, with a close match for a misspelt option; ``--help`` is unchanged.
"""

from __future__ import annotations

import difflib
import re
import sys
from pathlib import Path
from typing import Any, NoReturn

import yaml
from pytorch_lightning.cli import LightningArgumentParser

from nem_lightning.errors import ConfigError


def config_files(args: list[str]) -> list[str]:
    """The files given to ``--config`` / ``-c`` in a command line."""
    files = []
    for i, token in enumerate(args):
        if token in ("--config", "-c") and i + 1 < len(args):
            files.append(args[i + 1])
        elif token.startswith("--config="):
            files.append(token.split("=", 1)[1])
    return files


def _read_yaml(name: str) -> Any:
    path = Path(name)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise ConfigError(f"--config {name!r} {what}; name a YAML config file")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:

        def at(mark: Any) -> str:
            return f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""

        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        context = getattr(err, "context", None)
        opened = f"{context}{at(getattr(err, 'context_mark', None))}: " if context else ""
        raise ConfigError(
            f"--config {name!r} is not valid YAML ({opened}{problem}{at(getattr(err, 'problem_mark', None))})"
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"--config {name!r} could not be read ({err})") from None


def base_chain(name: str, seen: tuple[str, ...] = ()) -> list[str]:
    """A config file and the bases it names (``base:``, relative to its folder), the farthest base first."""
    loaded = _read_yaml(name)
    base = loaded.get("base") if isinstance(loaded, dict) else None
    if not base:
        return [name]
    path = str(Path(name).parent / str(base))
    if path in seen or path == name:
        raise ConfigError(f"--config {name!r}: its base {base!r} names itself through its bases")
    if not Path(path).is_file():
        raise ConfigError(f"--config {name!r}: its base {base!r} ({path}) does not exist")
    return [*base_chain(path, (*seen, name)), name]


def expand_bases(args: list[str]) -> list[str]:
    """The command line with each ``--config`` file preceded by the bases it names, so they are read first."""
    out, i = [], 0
    while i < len(args):
        token = args[i]
        if token in ("--config", "-c") and i + 1 < len(args):
            name, i = args[i + 1], i + 2
        elif token.startswith("--config="):
            name, i = token.split("=", 1)[1], i + 1
        else:
            out.append(token)
            i += 1
            continue
        for file in base_chain(name):
            out += ["--config", file]
    return out


def _merge(into: dict, other: dict) -> dict:
    for key, value in other.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value  # lists and values are replaced whole, as jsonargparse does
    return into


def load_config(name: str) -> dict[str, Any]:
    """What a config file sets once its bases are read (``base`` dropped): for scripts that read configs."""
    merged: dict[str, Any] = {}
    for file in base_chain(str(name)):
        _merge(merged, _read_yaml(file) or {})
    merged.pop("base", None)
    return merged


def check_config_files(args: list[str]) -> None:
    """Refuse a missing ``--config`` file or one that is not valid YAML, naming it and the place of the fault."""
    for name in config_files(args):
        loaded = _read_yaml(name)
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"--config {name!r} must hold a mapping of options, not a {type(loaded).__name__}")


def stated_model_options(args: list[str]) -> set[str]:
    """The model options a command line states, on it (``--model.k 3``) or in its ``--config`` files."""
    stated = set()
    for token in args:
        if token.startswith("--model."):
            stated.add(token[len("--model.") :].split("=", 1)[0])
    for name in config_files(args):
        try:
            model = (yaml.safe_load(Path(name).read_text()) or {}).get("model")
        except (OSError, yaml.YAMLError, AttributeError):
            continue
        if isinstance(model, dict):
            stated.update(str(key) for key in model)
    return stated


def _option_names(parser: Any) -> list[str]:
    return [a.dest for a in getattr(parser, "_actions", []) if isinstance(getattr(a, "dest", None), str)]


def _close_match(key: str, parser: Any) -> str:
    match = difflib.get_close_matches(key, _option_names(parser), n=1, cutoff=0.7)
    return f" (did you mean --{match[0]}?)" if match else ""


def one_line_error(message: str, parser: Any) -> str:
    """A jsonargparse error message as one line naming the option, with a close match for an unknown one."""
    text = " ".join(message.split())
    unknown = re.match(r"unrecognized arguments: (\S+)", text)
    if unknown:
        option = unknown.group(1).split("=", 1)[0]
        return f"unknown option {option}{_close_match(option.lstrip('-'), parser)}"
    refused = re.match(r"Subcommand '(\w+)' does not accept (?:nested key|option) '([\w.]+)'", text)
    if refused:
        key = refused.group(2)
        return f"nem {refused.group(1)} has no option {key} (set in a --config file){_close_match(key, parser)}"
    typed = re.match(r'Parser key "([\w.]+)": (.*)', text)
    if typed:
        key, reason = typed.groups()
        expected = re.match(r"Expected a (.+?)\. Got value: (.*)", reason)
        if expected:
            kind, value = expected.groups()
            kind = re.sub(r"<class '(\w+)'>", r"\1", kind)
            choices = re.fullmatch(r"typing\.Literal\[(.*)\]", kind)
            kind = f"one of {choices.group(1)}" if choices else f"a value of type {kind}"
            reason = f"expected {kind}, got {value!r}"
        return f"--{key}: {reason[:300]}"
    return text[:400]


class NEMArgumentParser(LightningArgumentParser):
    """LightningArgumentParser whose errors are one line on stderr (exit code 2) instead of usage and message."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:  # jsonargparse catches it and reports it through the parser above
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        words = parser.prog.replace(" [options]", "").split()
        prog = " ".join(["nem", *words[1:]])  # in process, prog is the caller's script name
        sys.stderr.write(f"error: {one_line_error(message, parser)}; see {prog} --help\n")
        self.exit(2)
