"""The work directory's JSONL records: a line torn by a crash is tolerated only at the end, and only there."""

from __future__ import annotations

from pathlib import Path

import pytest

from twofold.core.workspace import CorruptFileError, Workspace

ROWS = [{"q": "a", "i": 0}, {"q": "b", "i": 1}]


def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    ws.append_jsonl("rows.jsonl", ROWS)
    with (tmp_path / "rows.jsonl").open("a") as fh:
        fh.write('{"q": "c", "i"')  # the process died mid-write
    assert ws.read_jsonl("rows.jsonl") == ROWS


def test_a_complete_last_row_without_its_newline_is_kept(tmp_path: Path) -> None:
    (tmp_path / "rows.jsonl").write_text('{"q": "a", "i": 0}\n\n{"q": "b", "i": 1}')
    assert Workspace(tmp_path).read_jsonl("rows.jsonl") == ROWS  # the blank line carries nothing


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ('{"q": "a", "i": 0}\n{"q": "b", "i"\n{"q": "c", "i": 2}\n', 2),  # damage in the middle
        ('{"q": "a", "i": 0}\nnot json\n', 2),  # a whole last line (it has its newline): not a torn write
        ('{"q": "a", "i"{"q": "b", "i": 1}\n', 1),  # a torn row with another written after it
    ],
)
def test_corruption_anywhere_else_names_the_file_and_line(tmp_path: Path, text: str, line: int) -> None:
    (tmp_path / "rows.jsonl").write_text(text)
    with pytest.raises(CorruptFileError, match=rf"rows\.jsonl line {line}: not valid JSON"):
        Workspace(tmp_path).read_jsonl("rows.jsonl")


def test_appending_after_a_torn_line_drops_the_fragment_so_the_file_stays_readable(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    ws.append_jsonl("rows.jsonl", ROWS[:1])
    with (tmp_path / "rows.jsonl").open("a") as fh:
        fh.write('{"q": "torn"')
    ws.append_jsonl("rows.jsonl", ROWS[1:])  # the resumed stage appends what it redid
    assert ws.read_jsonl("rows.jsonl") == ROWS
    assert (tmp_path / "rows.jsonl").read_text().endswith('"i": 1}\n')


def test_appending_after_a_complete_row_without_its_newline_keeps_that_row(tmp_path: Path) -> None:
    (tmp_path / "rows.jsonl").write_text('{"q": "a", "i": 0}')
    ws = Workspace(tmp_path)
    ws.append_jsonl("rows.jsonl", ROWS[1:])
    assert ws.read_jsonl("rows.jsonl") == ROWS


def test_a_missing_file_reads_as_no_rows_and_summaries_round_trip(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "job")
    assert ws.read_jsonl("nothing.jsonl") == [] and ws.done("rl") is None
    ws.mark_done("rl_gold", {"steps": 3})
    assert ws.done("rl_gold") == {"steps": 3} and ws.done("rl") is None
