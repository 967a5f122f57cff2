"""lv3ph.modelfiles: the files a model needs, resolved as OpenDSS resolves them.

References are OpenDSS itself (plain opendssdirect): the values of load shapes OpenDSS read
tell which of several same-named files it opened, and a model copied with only the listed
files must compile to the same circuit while dropping any one of them must break it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from opendssdirect import dss

from lv3ph.errors import ModelError
from lv3ph.modelfiles import COMMAND_PREFIX, model_files, references
from tests.conftest import IEEE_4W_PME, ROOT

HEAD = "clear\nnew circuit.x basekv=0.4\n"


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root / next(iter(files))


def _opendss(master: Path):  # -> opendssdirect context, or raises its DSSException
    ctx = dss.NewContext()
    cwd = os.getcwd()
    try:
        ctx.Text.Command(f'compile "{master}"')
    finally:
        os.chdir(cwd)
    return ctx


def _shapes(ctx) -> dict[str, list[float]]:
    out = {}
    for name in ctx.LoadShape.AllNames():
        ctx.LoadShape.Name(name)
        out[name] = [float(v) for v in ctx.LoadShape.PMult()]
    return out


def _rel(master: Path) -> list[str]:
    return [p.relative_to(master.parent.resolve()).as_posix() for p in model_files(master)]


# --------------------------------------------------------------------------- resolution as OpenDSS does it

#: Same-named files in several folders, each holding a distinct value: what OpenDSS read shows
#: which one it opened (Redirect returns to the caller's folder, Compile stays, CD and DataPath move).
RESOLUTION = {
    "master.dss": HEAD
    + "Redirect sub/a.dss\n"  # nested relative to sub/
    + "new loadshape.after_redirect npts=1 interval=1 mult=(file=v.csv)\n"  # back in the master's folder
    + "red sub\\deeper\\b\n"  # abbreviated, backslashes, no extension -> b.dss
    + "c other/c.dss\n"  # Compile: stays in other/
    + "new loadshape.after_compile npts=1 interval=1 csvfile=v.csv\n"
    + "cd ../sub\n"
    + "new loadshape.after_cd npts=1 interval=1 mult=[sngfile=v.sng]\n"
    + "set datapath=deeper\n"
    + "New Loadshape.after_datapath npts=1 interval=1\n~ mult = ( file = v.csv )\n",
    "v.csv": "1\n",
    "sub/a.dss": "new loadshape.in_a npts=1 interval=1 mult=(file=v.csv)\nredirect deeper/d.dss\n",
    "sub/v.csv": "2\n",
    "sub/deeper/d.dss": "new loadshape.in_d npts=1 interval=1 mult=(file=v.csv)\n",
    "sub/deeper/v.csv": "3\n",
    "sub/deeper/b.dss": "new loadshape.in_b npts=1 interval=1 mult=(file=../v.csv)\n",
    "other/c.dss": "new loadshape.in_c npts=1 interval=1 mult=[9]\n",
    "other/v.csv": "4\n",
}


def test_paths_resolve_as_opendss_reads_them(tmp_path: Path) -> None:
    files = dict(RESOLUTION)
    master = _tree(tmp_path, files)
    np.array([5.0], dtype=np.float32).tofile(tmp_path / "sub" / "v.sng")
    shapes = _shapes(_opendss(master))
    # which v.* each shape read, by its value (the independent reference) ...
    value_file = {1.0: "v.csv", 2.0: "sub/v.csv", 3.0: "sub/deeper/v.csv", 4.0: "other/v.csv", 5.0: "sub/v.sng"}
    read_by_opendss = {name: value_file[v[0]] for name, v in shapes.items() if name != "default" and v[0] in value_file}
    assert read_by_opendss == {
        "in_a": "sub/v.csv",
        "in_d": "sub/deeper/v.csv",
        "after_redirect": "v.csv",
        "in_b": "sub/v.csv",
        "after_compile": "other/v.csv",
        "after_cd": "sub/v.sng",
        "after_datapath": "sub/deeper/v.csv",
    }
    # ... is what the walker lists, with every script, in reading order
    assert _rel(master) == [
        "master.dss",
        "sub/a.dss",
        "sub/v.csv",
        "sub/deeper/d.dss",
        "sub/deeper/v.csv",
        "v.csv",
        "sub/deeper/b.dss",
        "other/c.dss",
        "other/v.csv",
        "sub/v.sng",
    ]


def test_listed_files_are_exactly_what_opendss_needs(tmp_path: Path) -> None:
    master = _tree(tmp_path / "src", RESOLUTION)
    np.array([5.0], dtype=np.float32).tofile(tmp_path / "src" / "sub" / "v.sng")
    listed = _rel(master)
    expected = _shapes(_opendss(master))

    def copy(skip: str | None) -> Path:
        dst = tmp_path / f"copy_{len(list(tmp_path.iterdir()))}"
        for rel in listed:
            if rel != skip:
                (dst / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(master.parent / rel, dst / rel)
        for sub in ("sub/deeper", "other"):  # folders CD/DataPath enter must exist
            (dst / sub).mkdir(parents=True, exist_ok=True)
        return dst / "master.dss"

    assert _shapes(_opendss(copy(None))) == expected
    for rel in listed[1:]:  # each one is needed: OpenDSS fails without it
        with pytest.raises(dss.DSSException):
            _opendss(copy(rel))


def test_a_bundled_feeder_copied_by_its_file_list_solves_the_same(tmp_path: Path) -> None:
    """The PME twin: Redirects, BusCoords, and load profiles in ../ieee_eu_lv."""
    master = IEEE_4W_PME
    files = model_files(master)
    assert files[0] == master.resolve()
    root = Path(os.path.commonpath(files))  # the 4-wire twins read the profiles of ../ieee_eu_lv
    for p in files:
        dst = tmp_path / p.relative_to(root)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, dst)
    results = []
    for m in (master, tmp_path / files[0].relative_to(root)):
        ctx = _opendss(m)
        ctx.Text.Command("set mode=yearly stepsize=1m number=566")
        ctx.Solution.Solve()
        results.append((tuple(ctx.Circuit.TotalPower()), sorted(ctx.LoadShape.AllNames()), ctx.Circuit.NumNodes()))
    assert results[0] == results[1]
    assert len(results[0][1]) == 56  # default + the 55 profiles the model uses
    names = {p.relative_to(root).as_posix() for p in files}
    assert {"ieee_eu_lv_4wire/Buscoords.txt", "ieee_eu_lv_4wire/Earthing_PME.dss"} <= names
    assert "ieee_eu_lv/Daily_1min_100profiles/load_profile_1.txt" in names


# --------------------------------------------------------------------------- reading the text


def test_comments_quotes_and_continuations(tmp_path: Path) -> None:
    master = _tree(
        tmp_path,
        {
            "m.dss": HEAD
            + "! Redirect commented.dss\n"
            + "// Redirect commented.dss\n"
            + "Redirect real.dss ! Redirect commented.dss\n"
            + "/* block\nRedirect commented.dss\n*/ Redirect commented.dss\n"
            + "  /* not a block comment in OpenDSS (indented): an unknown command, nothing to read\n"
            + 'REDIRECT "with space.dss"\n'
            + "New Loadshape.q npts=1 interval=1\n"
            + "~ mult=(file=q.csv, col=1) !(file=commented.csv)\n"
            + "Loadshape.q.qmult={dblfile=q.dbl}\n"
            + "new xycurve.c npts=1 xarray='file=x.csv' yarray=[1]\n"
            + "BusCoords file=xy.csv\n"
            + "Export voltages out.csv\n"  # output: not read
            + "~ DynaData=(file=for_the_user_dll.txt)\n",  # a user-written model's business
            "real.dss": "",
            "with space.dss": "",
            "q.csv": "1\n",
            "x.csv": "1\n",
            "xy.csv": "",
        },
    )
    np.array([1.0]).tofile(tmp_path / "q.dbl")
    assert _rel(master) == ["m.dss", "real.dss", "with space.dss", "q.csv", "q.dbl", "x.csv", "xy.csv"]
    kinds = [(r.kind, r.line, r.name) for r in references(master)]
    assert kinds[0] == ("redirect", 5, "real.dss")
    assert kinds[-1] == ("coordinates", 15, "xy.csv")


def test_a_byte_order_mark_is_skipped_as_opendss_does(tmp_path: Path) -> None:
    master = _tree(tmp_path, {"m.dss": HEAD + "redirect inner.dss\n", "sub.dss": "new loadshape.s npts=1 mult=[7]\n"})
    (tmp_path / "inner.dss").write_bytes(b"\xef\xbb\xbfredirect sub.dss\n")
    assert _shapes(_opendss(master))["s"] == [7.0]
    assert _rel(master) == ["m.dss", "inner.dss", "sub.dss"]


def test_script_variables_are_substituted_as_opendss_does(tmp_path: Path) -> None:
    master = _tree(
        tmp_path,
        {
            "m.dss": HEAD
            + "var @script=sub.dss @dir=d @shape=one.csv\n"
            + 'redirect "@SCRIPT"\n'  # whole values only, names case-insensitive
            + "cd @dir\n"
            + "new loadshape.q npts=1 interval=1 mult=(file=@shape)\n",
            "sub.dss": "new loadshape.s npts=1 interval=1 mult=[7]\n",
            "d/one.csv": "3\n",
        },
    )
    shapes = _shapes(_opendss(master))
    assert shapes["s"] == [7.0] and shapes["q"] == [3.0]
    assert _rel(master) == ["m.dss", "sub.dss", "d/one.csv"]


def test_command_abbreviations_match_opendss_command_order() -> None:
    """OpenDSS takes the first command of its list that starts with the typed text."""
    ctx = dss.NewContext()
    ex = ctx.Executive
    commands = [ex.Command(i).lower() for i in range(1, ex.NumCommands() + 1)]

    def opendss_command(text: str) -> str:
        return text if text in commands else next(c for c in commands if c.startswith(text))

    for command, shortest in COMMAND_PREFIX.items():
        assert opendss_command(command[:shortest]) == command, command
        if shortest > 1:
            assert opendss_command(command[: shortest - 1]) != command, command


def test_a_missing_giscoords_file_is_ignored_as_opendss_does(tmp_path: Path) -> None:
    master = _tree(tmp_path, {"m.dss": HEAD + "GISCoords nothere.csv\n"})
    _opendss(master)  # no error
    assert _rel(master) == ["m.dss"]
    (tmp_path / "nothere.csv").write_text("")
    assert _rel(master) == ["m.dss", "nothere.csv"]


def test_a_script_read_twice_is_not_a_cycle(tmp_path: Path) -> None:
    master = _tree(
        tmp_path,
        {
            "m.dss": HEAD + "redirect a.dss\nredirect b.dss\n",
            "a.dss": "redirect c.dss\n",
            "b.dss": "redirect c.dss\n",
            "c.dss": "",
        },
    )
    _opendss(master)  # OpenDSS reads it fine
    assert _rel(master) == ["m.dss", "a.dss", "c.dss", "b.dss"]
    assert [r.name for r in references(master)] == ["a.dss", "c.dss", "b.dss", "c.dss"]


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"m.dss": HEAD + "redirect m.dss\n"}, "m.dss line 3: redirect cycle m.dss -> m.dss"),
        (
            {"m.dss": HEAD + "redirect a.dss\n", "a.dss": "\nredirect sub/b.dss\n", "sub/b.dss": "compile ../a.dss\n"},
            "sub/b.dss line 1: compile cycle a.dss -> sub/b.dss -> a.dss",
        ),
        ({"m.dss": HEAD + "\nredirect nothere.dss\n"}, "m.dss line 4: redirected file 'nothere.dss' not found"),
        (
            {"m.dss": HEAD + "new loadshape.s npts=2 interval=1 mult=(file=profiles/p1.csv)\n"},
            "m.dss line 3: data file 'profiles/p1.csv' not found",
        ),
        ({"m.dss": HEAD + "buscoords xy.csv\n"}, "m.dss line 3: bus coordinates file 'xy.csv' not found"),
        ({"m.dss": HEAD + "redirect Lines.dss\n", "lines.dss": ""}, "lines.dss differs only in letter case"),
        ({"m.dss": HEAD + "redirect sub\n", "sub/x.dss": ""}, "m.dss line 3: redirected file 'sub' is not a file"),
    ],
    ids=["self", "a-b-a", "missing-redirect", "missing-loadshape", "missing-buscoords", "letter-case", "folder"],
)
def test_cycles_and_missing_files_name_file_and_line(
    files: dict[str, str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    master = _tree(tmp_path, files)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelError) as err:
        model_files(master)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_every_missing_file_is_reported_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    master = _tree(tmp_path, {"m.dss": HEAD + "redirect a.dss\nredirect b.dss\nbuscoords c.csv\n"})
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelError, match="line 3: .*'a.dss'.*; m.dss line 4: .*'b.dss'.*; m.dss line 5: .*'c.csv'"):
        model_files(master)


def test_redirect_cycle_exits_2_with_one_line_instead_of_crashing(tmp_path: Path) -> None:
    """OpenDSS itself dies with a segmentation fault on this model (exit 139)."""
    master = _tree(
        tmp_path, {"m.dss": HEAD + "redirect a.dss\n", "a.dss": "redirect b.dss\n", "b.dss": "redirect a.dss\n"}
    )
    proc = subprocess.run(
        [sys.executable, "-m", "lv3ph.cli", "info", str(master)], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("lv3ph: error: ") and "b.dss line 1: redirect cycle" in lines[0], lines
    assert "a.dss -> " in lines[0] and proc.stdout == ""


def test_an_unreadable_script_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    master = _tree(tmp_path, {"m.dss": HEAD + "redirect a.dss\n", "a.dss": ""})
    read = Path.read_bytes

    def deny(self: Path) -> bytes:
        if self.name == "a.dss":
            raise PermissionError(13, "Permission denied")
        return read(self)

    monkeypatch.setattr(Path, "read_bytes", deny)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelError, match=r"^a.dss: cannot be read \(Permission denied\)$"):
        model_files(master)
