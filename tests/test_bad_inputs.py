"""Data-driven bad-input corpus (tests/bad_inputs/*): exit code 2, one clear line, no output."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from lv3ph.cli import main

CORPUS = Path(__file__).parent / "bad_inputs"
CASES = sorted(p for p in CORPUS.iterdir() if p.is_dir())


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 15
    assert {c.name.split("_")[0] for c in CASES} >= {"powerflow", "info", "allocate", "study"}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    args = (case / "args").read_text().strip().format(case=case, feeder=CORPUS / "feeder.dss", out=out)
    code = main([*shlex.split(args), *(["--no-progress"] if args.split()[0] in ("powerflow", "allocate") else [])])
    err = capsys.readouterr().err.strip().splitlines()
    expected = (case / "expected").read_text().strip()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("lv3ph: error: "), err
    assert expected in err[0]
    assert list(out.iterdir()) == []


def test_an_internal_failure_is_one_line_with_exit_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import lv3ph.cli

    def broken(args: object) -> int:
        raise KeyError("a bug\nover two lines")

    monkeypatch.setattr(lv3ph.cli, "cmd_info", broken)
    monkeypatch.delenv("LV3PH_TRACEBACK", raising=False)
    assert main(["info", str(CORPUS / "feeder.dss")]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "lv3ph: internal error: KeyError: 'a bug\\nover two lines' (LV3PH_TRACEBACK=1 shows where)"
    ]
    monkeypatch.setenv("LV3PH_TRACEBACK", "1")
    with pytest.raises(KeyError):
        main(["info", str(CORPUS / "feeder.dss")])
