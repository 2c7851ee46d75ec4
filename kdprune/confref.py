"""The configuration reference (docs/configuration.md), generated from the YAML files of the config tree.

``python -m kdprune.confref > docs/configuration.md`` (``make docs``) writes it; tests/test_config_reference.py fails
while the committed file differs from ``render()``. One section per file: the root config.yaml, then every group
option (``group/option.yaml``) in sorted order. Each key is shown by its dotted path in the composed config (the
group's package, or the root for ``# @package _global_``), its default as written (interpolations verbatim) and its
meaning: the trailing comment on its line, else the comment block directly above it, joined to one line.

PyYAML drops comments, so the files are read line by line; they are plain block YAML (nesting by indentation, flow
values on one line), which is what this reader handles. Conventions it relies on:

- a file's leading comment block describes the file (the section's paragraph), not its first key;
- comment lines right after a trailing comment, indented deeper than its key and than the next line, continue it;
- a ``defaults:`` list is shown as a ``defaults:`` line, not as keys;
- a mapping key is listed only when it carries a comment (its children are listed anyway);
- a key with no comment is listed with an empty meaning and named by ``undocumented()``.
"""

from __future__ import annotations

import re
import sys
import textwrap
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path

from kdprune import CONF_DIR

_KEY = re.compile(r"^\s*([\w.\-/]+):(?:\s+(.*))?$")  # key: value (value optional), on a comment-stripped line


@dataclass
class Key:
    path: str  # dotted, as in the composed config: prune.target.int8_bytes
    value: str  # as written in the YAML; "" for a mapping
    meaning: str = ""  # the comment, one line
    mapping: bool = False  # a mapping (listed only with a comment); otherwise a leaf (flow {..} / [..] included)


@dataclass
class ConfFile:
    rel: str  # relative to the config dir: prune/gradual.yaml
    package: str  # where its keys go: "" for the root
    about: list[str] = field(default_factory=list)  # the leading comment block, line by line
    defaults: list[str] = field(default_factory=list)
    keys: list[Key] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # comment lines that are no key's meaning (e.g. above a key
    # that has a trailing comment, or followed by a blank line)


def _split_comment(line: str) -> tuple[str, str, int]:
    """``(content, comment, column of '#')``: a '#' at the start or after a space, outside quotes, opens a comment (its
    text keeps its indentation beyond the one space after '#')."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] in " \t"):
            text = line[i + 1:].rstrip()
            return line[:i].rstrip(), text[1:] if text.startswith(" ") else text, i
    return line.rstrip(), "", -1


def _join(parts: list[str]) -> str:
    return " ".join(p.strip() for p in parts if p.strip())


def parse(path: Path, rel: str, package: str) -> ConfFile:
    """The file's keys (dotted under ``package``, which its ``# @package`` header overrides), defaults and comments."""
    out = ConfFile(rel, package)
    stack: list[tuple[int, str]] = []  # (indent, dotted path) of the open mappings
    block: list[tuple[int, str]] = []  # (column, text) of the full-line comments since the last line of YAML
    cont: tuple[Key, int] | None = None  # the key (and its indent) whose trailing comment `block` may continue
    header, in_defaults, last = True, False, None  # `last`: a key without a value (a mapping, or a block list)

    def settle(indent: int) -> list[str]:
        """Append to ``cont`` the leading comment lines deeper than it and than the next line (at ``indent``, -1 for
        none): they continue its trailing comment. The rest is the block above the next line."""
        i = 0
        while cont and i < len(block) and block[i][0] > max(cont[1], indent):
            i += 1
        if i:
            cont[0].meaning = _join([cont[0].meaning, *(t for _, t in block[:i])])
        return [t for _, t in block[i:]]

    for raw in path.read_text().splitlines():
        content, comment, col = _split_comment(raw)
        if not content.strip():
            if re.match(r"\s*@package\s", comment):
                pkg = comment.split()[1]
                out.package = "" if pkg == "_global_" else package if pkg == "_group_" else pkg
            elif col >= 0:
                block.append((col, comment))
            elif header and block:  # a blank line ends the file's leading comment
                out.about, header, block = [t for _, t in block], False, []
            else:  # a blank line: a comment block above a key must touch it
                out.dropped += settle(-1)
                block, cont = [], None
            continue
        indent = len(content) - len(content.lstrip())
        if header:
            out.about, header, block = [t for _, t in block], False, []
        above, block = settle(indent), []
        text = content.strip()
        if text.startswith("- ") or text == "-":  # a list item: of defaults, or of the key above (a block list)
            item = text[1:].strip()
            if in_defaults:
                out.defaults.append(item)
            elif last is not None:
                last.mapping, last.value = False, (last.value[:-1] + ", " if last.value else "[") + item + "]"
            out.dropped += above
            cont = None
            continue
        if not (m := _KEY.match(content)):  # a root flow value ({} of an empty option), or unknown to this reader
            out.dropped += above
            cont = None
            continue
        key, value = m.group(1), (m.group(2) or "").strip()
        while stack and stack[-1][0] >= indent:
            stack.pop()
        in_defaults = not stack and key == "defaults"
        if in_defaults:
            out.dropped += above
            cont, last = None, None
            continue
        parent = stack[-1][1] if stack else out.package
        dotted = f"{parent}.{key}" if parent else key
        entry = Key(dotted, value, comment.strip() or _join(above), mapping=not value)
        if comment.strip():
            out.dropped += above  # the trailing comment wins
        out.keys.append(entry)
        if not value:
            stack.append((indent, dotted))
        last = None if value else entry
        cont = (entry, indent) if comment.strip() else None
    if header:
        out.about = [t for _, t in block]
    else:
        out.dropped += settle(-1)
    out.keys = [k for k in out.keys if not k.mapping or k.meaning]
    return out


def load(conf_dir: Path = CONF_DIR) -> list[ConfFile]:
    """The root config.yaml, then every group option in sorted order (hydra/launcher/x.yaml: package hydra.launcher)."""
    conf_dir = Path(conf_dir)
    files = [parse(conf_dir / "config.yaml", "config.yaml", "")]
    for p in sorted(conf_dir.rglob("*.yaml")):
        rel = p.relative_to(conf_dir).as_posix()
        if rel != "config.yaml":
            files.append(parse(p, rel, ".".join(p.relative_to(conf_dir).parent.parts)))
    return files


def undocumented(conf_dir: Path = CONF_DIR) -> list[str]:
    """``file: dotted.key`` for every key listed without a comment."""
    return [f"{f.rel}: {k.path}" for f in load(conf_dir) for k in f.keys if not k.meaning]


def _md(text: str) -> str:
    """Prose for a Markdown table cell: emphasis and HTML characters escaped outside `code spans`, pipes everywhere."""
    parts = text.split("`") if text.count("`") % 2 == 0 else [text]
    for i in range(0, len(parts), 2):
        parts[i] = re.sub(r"([\\*]|<(?=[A-Za-z/!?])|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9]))", r"\\\1", parts[i])
    return "`".join(parts).replace("|", r"\|")


def _about(lines: list[str]) -> list[str]:
    """A file's leading comment: prose joined into paragraphs, indented lines (commands, lists) as code blocks."""
    out = []
    for kind, group in groupby(lines, lambda t: "blank" if not t.strip() else "code" if t[:1] == " " else "prose"):
        group = list(group)
        if kind == "prose":
            out += ["", _md(_join(group))]
        elif kind == "code":
            out += ["", "```text", *textwrap.dedent("\n".join(group)).splitlines(), "```"]
    return out


def _code(text: str) -> str:
    return f"`{text}`".replace("|", r"\|") if text else ""


def _selection(f: ConfFile, root: ConfFile) -> str:
    """How a run selects the file, and where its keys go."""
    if f.rel == "config.yaml":
        return "The root config: every run composes it."
    group, option = f.rel[: -len(".yaml")].rsplit("/", 1)
    chosen = dict(d.split(": ", 1) for d in root.defaults if ": " in d)
    plus = "" if group in chosen or group.startswith("hydra") else "+"
    sel = f"Selected with `{plus}{group}={option}`" + (" (the default)" if chosen.get(group) == option else "")
    where = f"keys under `{f.package}`" if f.package else "keys at the root of the config (`# @package _global_`)"
    return f"{sel}; {where}."


def render(conf_dir: Path = CONF_DIR) -> str:
    """docs/configuration.md: the Markdown reference of every key of every file under ``conf_dir``."""
    files = load(conf_dir)
    lines = [
        "# Configuration reference",
        "",
        "Generated from the YAML files of `conf/` (`kdprune/conf/`) by `python -m kdprune.confref`: do not edit it",
        "by hand; after changing a config file, regenerate it with `make docs` (tests/test_config_reference.py fails",
        "while it is stale). Each key is shown by its dotted path in the composed config (what a command-line",
        "override names: `python -m kdprune prune.target.int8_bytes=1500000`), its default as written in the YAML",
        "(interpolations verbatim) and the comment on it in the file. An experiment's keys override the defaults of",
        "the groups it selects.",
    ]
    for f in files:
        lines += ["", f"## `{f.rel}`", "", _selection(f, files[0])]
        lines += _about(f.about)
        if f.defaults:
            lines += ["", "defaults: " + ", ".join(_code(d) for d in f.defaults)]
        lines += [""]
        if not f.keys:
            lines += ["No keys."]
            continue
        lines += ["| key | default | meaning |", "|---|---|---|"]
        lines += ["|" + "|".join(f" {c} " if c else " " for c in (_code(k.path), _code(k.value), _md(k.meaning))) + "|"
                  for k in f.keys]
    return "\n".join(lines) + "\n"


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
