"""The files an OpenDSS model is made of, found by reading its text (no OpenDSS calls).

:func:`model_files` starts at a master file and follows every file it references, as
OpenDSS itself would resolve them, and returns the complete list: the master, every
script reached through ``Redirect`` / ``Compile`` (recursively), and every data file those
scripts read. It raises one :class:`~lv3ph.errors.ModelError` naming file and line when a
script reaches itself again (``a.dss -> b.dss -> a.dss``, on which OpenDSS crashes with a
segmentation fault) or when a referenced file does not exist. :class:`lv3ph.dss.Engine`
runs it before every compile; it also tells a remote worker which files to ship.

What is followed (commands and property names are case-insensitive, commands may be
abbreviated as OpenDSS allows, e.g. ``red`` for ``Redirect``, ``c`` for ``Compile``):

- scripts: ``Redirect FILE``, ``Compile FILE`` (also ``file=FILE``); a name without an
  extension that does not exist is tried with ``.dss``, as OpenDSS does;
- bus coordinates: ``BusCoords``, ``LatLongCoords``, ``GISCoords`` (``[file=]FILE``; a
  missing GISCoords file is not an error, OpenDSS ignores it); ``UUIDs FILE``;
- data in object properties (``New``, ``Edit``, ``More`` / ``M`` / ``~``, ``BatchEdit``,
  ``Set`` and ``Class.name.property=value`` lines): the properties ``CSVFile``,
  ``PQCSVFile``, ``SngFile`` and ``DblFile`` (LoadShape, TShape, PriceShape, XYcurve,
  GrowthShape, Spectrum), and any array value written as a file, ``mult=(file=F)``,
  ``[sngfile=F]``, ``{dblfile=F}``, ``"file=F col=2"`` (Mult, PMult, QMult, Hour, Temp,
  Price, XArray, YArray, Points, TCC curves, ``Set KeepList`` ...).

Path resolution follows OpenDSS: a relative name is taken from the current directory,
which is the directory of the file being read. ``Redirect`` enters the file's directory
and returns to the previous one when the file ends; ``Compile`` enters it and stays;
``CD DIR`` and ``Set DataPath=DIR`` change it. Backslashes are path separators.

Parsing follows OpenDSS's reader: ``!`` and ``//`` start a comment anywhere outside
quotes; a line starting with ``/*`` opens a block comment that ends with the line
containing ``*/`` (the rest of that line is ignored too); values may be quoted with
``"..."`` / ``'...'`` or bracketed with ``(...)``, ``[...]``, ``{...}``; parameters are
separated by blanks or commas, ``name = value`` may have blanks around ``=``.

Script variables (``var @x=file.dss`` then ``Redirect @x``) are substituted where a whole
value is a variable, as OpenDSS does; a name starting with an undefined ``@`` variable is not
followed. Output files (``Export``, ``Save``, ``Show``, ``Distribute ... file=``) are
written, not read, and are not listed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lv3ph.errors import ModelError

# Shortest abbreviation OpenDSS accepts for each command that matters here. OpenDSS
# takes the first command of its list (in its own order) that starts with the typed text,
# so e.g. "r" and "re" are Reset and "red" is the shortest Redirect; "c" is Compile.
# Derived from DSS C-API 0.14's command list (tests/test_modelfiles.py checks it).
COMMAND_PREFIX = {
    "new": 1,
    "edit": 1,
    "more": 2,
    "m": 1,
    "~": 1,
    "compile": 1,
    "set": 3,
    "redirect": 3,
    "buscoords": 3,
    "cd": 2,
    "uuids": 2,
    "latlongcoords": 2,
    "batchedit": 2,
    "giscoords": 2,
    "var": 3,
}
_SCRIPTS = ("redirect", "compile")
_ONE_FILE = ("buscoords", "latlongcoords", "giscoords", "uuids")
_MOVES = (*_SCRIPTS, *_ONE_FILE, "cd", "var")  # commands that name a file or a directory
_PROPERTIES = ("new", "edit", "more", "m", "~", "batchedit", "set")
_FILE_PROPERTIES = ("csvfile", "pqcsvfile", "sngfile", "dblfile")
_USER_DATA = ("dynadata", "userdata")  # handed to a user-written DLL as is: not OpenDSS's to read
_ARRAY_FILE_KEYS = ("file", "sngfile", "dblfile")
_CLOSE = {'"': '"', "'": "'", "(": ")", "[": "]", "{": "}"}


@dataclass(frozen=True)
class Reference:
    """One file named in a model script.

    Attributes:
        path: the file OpenDSS reads (absolute, symbolic links resolved).
        kind: ``redirect``, ``compile``, ``coordinates`` or ``data``.
        source: the script that names it (absolute).
        line: 1-based line number in ``source``.
        name: the name as written in ``source``.
    """

    path: Path
    kind: str
    source: Path
    line: int
    name: str


def model_files(master: str | Path) -> list[Path]:
    """Every file the model ``master`` needs: the master first, then each referenced
    script and data file once, in the order OpenDSS reads them.

    Paths are absolute with symbolic links resolved (the files OpenDSS actually opens);
    they may lie outside the master's folder (``Redirect ../common/linecodes.dss``).

    Raises:
        ModelError: one line naming file and line of every missing file and of a
            ``Redirect``/``Compile`` cycle.
    """
    root = _resolve(Path(master))
    out = [root]
    seen = {root}
    for ref in references(master):
        if ref.path not in seen:
            seen.add(ref.path)
            out.append(ref.path)
    return out


def references(master: str | Path) -> list[Reference]:
    """Every file reference in the model ``master``, recursively, in reading order
    (a script redirected twice is read, and listed, twice; cycles are not followed).

    Raises:
        ModelError: as :func:`model_files`.
    """
    root = _resolve(Path(master))
    if not root.is_file():
        raise ModelError(f"model file not found: {master}")
    return _Walker(root).run()


def _resolve(path: Path) -> Path:
    return Path(os.path.realpath(path))


class _Walker:
    """Reads scripts depth first, tracking OpenDSS's current directory."""

    def __init__(self, master: Path) -> None:
        self.master = master
        self.cwd = master.parent
        self.refs: list[Reference] = []
        self.problems: list[str] = []
        self.vars: dict[str, str] = {}  # script variables (var @name=value), names lower case

    def run(self) -> list[Reference]:
        self._script(self.master, [self.master])
        if self.problems:
            raise ModelError("; ".join(self.problems))
        return self.refs

    def _script(self, path: Path, stack: list[Path]) -> None:
        try:
            text = path.read_bytes().decode("utf-8", "surrogateescape").removeprefix("\ufeff")  # OpenDSS skips a BOM
        except OSError as exc:
            self.problems.append(f"{self._show(path)}: cannot be read ({exc.strerror or exc})")
            return
        for number, tokens in _statements(text):
            command = _command(tokens[0]) if tokens[0][0] is None else None
            tokens = [(k, self.vars.get(v.lower(), v)) for k, v in tokens]  # OpenDSS substitutes whole values
            if command == "var":
                self.vars.update({k.lower(): v for k, v in tokens[1:] if k and k.startswith("@")})
            elif command in _SCRIPTS and len(tokens) > 1:
                self._enter(command, tokens[1][1], path, number, stack)
            elif command in _ONE_FILE and len(tokens) > 1:
                name = tokens[1][1]
                if command != "giscoords" or self._path(name).is_file():  # DSS C-API ignores a missing one
                    self._data(name, "coordinates" if command != "uuids" else "data", path, number)
            elif command == "cd" and len(tokens) > 1 and not tokens[1][1].startswith("@"):
                self.cwd = self._path(tokens[1][1])
            elif command in _PROPERTIES or (command is None and tokens[0][0] is not None):
                self._properties(tokens if command is None else tokens[1:], command, path, number)

    def _enter(self, kind: str, name: str, source: Path, number: int, stack: list[Path]) -> None:
        if name.startswith("@"):  # a script variable this walker does not know: not followed
            return
        target = self._path(name)
        if not target.exists() and not target.suffix:
            target = target.with_name(target.name + ".dss")
        if not self._check(target, kind, name, source, number):
            return
        target = _resolve(target)
        self.refs.append(Reference(target, kind, source, number, name))
        if target in stack:
            chain = " -> ".join(self._show(p) for p in [*stack[stack.index(target) :], target])
            self.problems.append(f"{self._show(source)} line {number}: {kind} cycle {chain}")
            return
        saved = self.cwd
        self.cwd = target.parent
        self._script(target, [*stack, target])
        if kind == "redirect":
            self.cwd = saved

    def _properties(self, tokens: list[tuple[str | None, str]], command: str | None, source: Path, n: int) -> None:
        for key, value in tokens:
            prop = (key or "").rsplit(".", 1)[-1].lower()
            if command == "set" and prop == "datapath" and value and not value.startswith("@"):
                self.cwd = self._path(value)
            elif prop in _FILE_PROPERTIES and value:
                self._data(value, "data", source, n)
            elif prop not in _USER_DATA:
                name = _array_file(value)
                if name:
                    self._data(self.vars.get(name.lower(), name), "data", source, n)

    def _data(self, name: str, kind: str, source: Path, number: int) -> None:
        if name.startswith("@"):
            return
        target = self._path(name)
        if self._check(target, kind, name, source, number):
            self.refs.append(Reference(_resolve(target), kind, source, number, name))

    def _check(self, target: Path, kind: str, name: str, source: Path, number: int) -> bool:
        if target.is_file():
            return True
        what = {"redirect": "redirected", "compile": "compiled", "coordinates": "bus coordinates"}.get(kind, "data")
        state = "is not a file" if target.exists() else "not found"
        hint = "" if target.exists() else _case_hint(target)
        self.problems.append(f"{self._show(source)} line {number}: {what} file {name!r} {state} ({target}{hint})")
        return False

    def _path(self, name: str) -> Path:
        return _resolve(self.cwd / name.replace("\\", "/"))

    def _show(self, path: Path) -> str:
        """``path`` as the user will recognise it: relative to the working directory when below it."""
        try:
            return str(path.relative_to(Path.cwd().resolve()))
        except ValueError:
            return str(path)


def _case_hint(target: Path) -> str:
    """``; X differs only in letter case`` when a path differing from ``target`` only in
    letter case exists, in the file name or in any folder on the way (models written on
    Windows)."""
    found = Path(target.anchor)
    for part in target.parts[len(found.parts) :]:
        if (found / part).exists():
            found = found / part
            continue
        same = [o for o in found.iterdir() if o.name.lower() == part.lower()] if found.is_dir() else []
        if not same:
            return ""
        found = same[0]
    return f"; {found} differs only in letter case" if found != target else ""


def _command(token: tuple[str | None, str]) -> str | None:
    """The command ``token`` stands for, among those in :data:`COMMAND_PREFIX`."""
    text = token[1].lower()
    if not text:
        return None
    if text in COMMAND_PREFIX:
        return text
    for command, shortest in COMMAND_PREFIX.items():
        if len(text) >= shortest and command.startswith(text):
            return command
    return None


def _array_file(value: str) -> str | None:
    """The file of an array value given as ``file=F ...``, ``sngfile=F`` or ``dblfile=F``."""
    tokens = _tokens(value)
    if tokens and tokens[0][0] is not None and tokens[0][0].lower() in _ARRAY_FILE_KEYS:
        return tokens[0][1] or None
    return None


def _statements(text: str) -> Iterator[tuple[int, list[tuple[str | None, str]]]]:
    """``(line number, [(name or None, value), ...])`` of the command lines of a script's text that
    may name a file or change directory (the others, most of a model, are skipped unparsed)."""
    in_block = False
    for number, line in enumerate(text.split("\n"), 1):
        line = line.rstrip("\r")
        if not in_block and line.startswith("/*"):
            in_block = True
        if in_block:
            in_block = "*/" not in line
            continue
        low = line.lower()
        if (
            "file" not in low
            and "datapath" not in low
            and _command((None, low.split(None, 1)[0] if low.strip() else "")) not in _MOVES
        ):
            continue
        tokens = _tokens(_strip_comment(line))
        if tokens:
            yield number, tokens


def _strip_comment(line: str) -> str:
    """``line`` up to a ``!`` or ``//`` outside quotes."""
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch == "!" or line.startswith("//", i):
            return line[:i]
    return line


def _tokens(text: str) -> list[tuple[str | None, str]]:
    """OpenDSS parameters of ``text``: ``(name, value)`` with ``name`` None for positional
    ones; quotes and brackets around a value are removed."""
    out: list[tuple[str | None, str]] = []
    i, n = 0, len(text)

    def skip(i: int) -> int:
        while i < n and (text[i].isspace() or text[i] == ","):
            i += 1
        return i

    def word(i: int) -> tuple[str, int]:
        if text[i] in _CLOSE:
            end = text.find(_CLOSE[text[i]], i + 1)
            end = n if end < 0 else end
            return text[i + 1 : end], end + 1
        j = i
        while j < n and not text[j].isspace() and text[j] not in ",=":
            j += 1
        return text[i:j], j

    i = skip(i)
    while i < n:
        if text[i] == "=":  # "=value" without a name
            i = skip(i + 1)
            if i >= n:
                break
        value, i = word(i)
        j = i
        while j < n and text[j].isspace():
            j += 1
        if j < n and text[j] == "=":
            j += 1
            while j < n and text[j].isspace():
                j += 1
            name = value
            if j < n and text[j] != ",":
                value, i = word(j)
            else:
                value, i = "", j
            out.append((name, value))
        else:
            out.append((None, value))
        i = skip(i)
    return out
