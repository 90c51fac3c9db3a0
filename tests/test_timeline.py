"""``restartable ls --plot``: a run's rows on a timeline (restartable._timeline), data and drawing."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from restartable import Checkpoint
from restartable._timeline import Timeline, render_html, timeline, write_plot
from restartable.cli import main

STAGING = ".staging-0123456789abcdef0123456789abcdef"


def _write(path: Path, rank: int, hours: range, history_size: int | None) -> None:
    checkpoint = Checkpoint("run", path=path, rank=rank, world_size=2, mode="append", history_size=history_size)
    with checkpoint as session:
        for h in hours:
            session.write(lead_time=np.timedelta64(h, "h"))


def killed_and_resumed_run(path: Path) -> dict[str, object]:
    """Two ranks keeping 2 rows each. Run 1 stops; run 2 resumes, rank 1 stalls after one row,
    and run 2 is killed in a commit of rank 0 (its staging folder stays) while rank 1's newest
    row is damaged."""
    _write(path, 0, range(0, 30, 6), history_size=2)  # sequences 1-5; 1-3 retired
    _write(path, 1, range(0, 30, 6), history_size=2)
    _write(path, 0, range(30, 48, 6), history_size=2)  # sequences 6-8, resumed
    _write(path, 1, range(30, 36, 6), history_size=2)  # sequence 6 only: rank 1 stalled
    (path / "rank_000000" / STAGING).mkdir()  # the commit run 2 was killed in
    rank1 = sorted((path / "rank_000001" / "commits").iterdir())
    damaged = rank1[-1]
    manifest = damaged / "manifest.json"
    manifest.write_bytes(manifest.read_bytes()[:-10])  # truncated by a crash of the disk
    return {"damaged": damaged.name}


@pytest.fixture
def run(tmp_path: Path) -> tuple[Path, dict[str, object]]:
    path = tmp_path / "run"
    facts = killed_and_resumed_run(path)
    return path, facts


def test_timeline_data_of_a_killed_and_resumed_two_rank_run(run: tuple[Path, dict[str, object]]) -> None:
    path, facts = run
    data = timeline(path)
    assert [s.rank for s in data.series] == [0, 1]
    assert data.progress_label == "lead time committed (hours)"
    rank0, rank1 = data.series
    # Every row kept, by sequence, with the lead time it committed, in time order.
    assert [p.sequence for p in rank0.points] == [4, 5, 6, 7, 8][-len(rank0.points) :]
    assert [p.progress for p in rank0.points] == [6.0 * (s - 1) for s in (p.sequence for p in rank0.points)]
    assert [p.saved_at for p in rank0.points] == sorted(p.saved_at for p in rank0.points)
    assert all(re.fullmatch(r"[0-9]{12}-[0-9a-f]{32}", p.commit_id) for p in rank0.points)
    # Retired rows: every sequence below the newest that is neither kept nor damaged.
    kept0 = {p.sequence for p in rank0.points}
    retired0 = {s for m in rank0.marks if m.kind == "retired" for s in m.sequences}
    assert retired0 == set(range(1, max(kept0))) - kept0
    assert retired0 and min(retired0) == 1
    # The interrupted commit of rank 0, the damaged newest row of rank 1.
    (interrupted,) = [m for m in rank0.marks if m.kind == "interrupted"]
    assert STAGING in interrupted.detail
    assert interrupted.time >= rank0.points[0].saved_at
    (damaged,) = [m for m in rank1.marks if m.kind == "damaged"]
    assert damaged.sequences == (int(str(facts["damaged"])[:12]),)
    assert not [m for m in rank1.marks if m.kind == "interrupted"]
    # A resume starts from the newest row both ranks have whole: a fallback past rank 1's damaged row.
    whole1 = {p.sequence for p in rank1.points}
    assert data.restart_sequence == max(kept0 & whole1)
    assert data.fallback is True
    assert f"falls back to row {data.restart_sequence}" in damaged.detail
    assert [p.sequence for s in data.series for p in s.points if p.restart_point] == [data.restart_sequence] * 2


def test_timeline_of_a_single_rank_store_without_marks(tmp_path: Path) -> None:
    with Checkpoint("one", path=tmp_path, mode="append") as session:
        for step in range(3):
            session.write(lead_time=step * 10)  # plain numbers: the axis says so, without a unit
    data = timeline(tmp_path)
    (series,) = data.series
    assert [p.progress for p in series.points] == [0.0, 10.0, 20.0]
    assert data.progress_label == "lead time committed"
    assert series.marks == ()
    assert data.restart_sequence == series.points[-1].sequence and data.fallback is False


def test_html_has_one_series_per_rank_and_the_marks(run: tuple[Path, dict[str, object]]) -> None:
    path, _ = run
    data = timeline(path)
    page = render_html(data)
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page and "<script" not in page
    assert "http" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")  # self-contained
    assert re.findall(r'<g class="series" data-rank="(\d+)"', page) == ["0", "1"]
    # Each point is a circle named by its commit id; retired, damaged and interrupted marks are drawn.
    ids = re.findall(r'data-commit-id="([^"]+)"', page)
    assert ids == [p.commit_id for s in data.series for p in s.points]
    assert len(re.findall(r'<g class="mark retired"', page)) == len(data.marks("retired"))
    assert len(re.findall(r'<g class="mark damaged"', page)) == 1
    assert len(re.findall(r'<g class="mark interrupted"', page)) == 1
    assert page.count('class="point restart-point"') == 2
    assert "(a fallback: newer rows are damaged)" in page


def test_ls_plot_html_and_png_through_the_cli(
    run: tuple[Path, dict[str, object]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = run
    page = tmp_path / "run.html"
    code = main(["ls", "--plot", str(page), str(path)])
    out = capsys.readouterr().out
    assert code == 1  # the damaged row, as without --plot
    assert f"timeline written to {page}" in out
    assert re.findall(r'<g class="series" data-rank="(\d+)"', page.read_text()) == ["0", "1"]

    pytest.importorskip("matplotlib")
    import matplotlib.image

    picture = tmp_path / "run.png"
    code = main(["ls", "--json", "--plot", str(picture), str(path)])
    report = json.loads(capsys.readouterr().out)  # --json output stays JSON
    assert code == 1 and len(report) == 2
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = matplotlib.image.imread(picture)
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert np.ptp(pixels[..., :3]) > 0  # something was drawn on the white


def test_png_without_matplotlib_is_a_usage_error_naming_the_extra(
    run: tuple[Path, dict[str, object]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path, _ = run
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what an install without the extra sees
    picture = tmp_path / "run.png"
    code = main(["ls", "--plot", str(picture), str(path)])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert "pip install 'restartable[plot]'" in captured.err and len(captured.err.splitlines()) == 1
    assert not picture.exists()
    # HTML needs nothing.
    assert main(["ls", "--plot", str(tmp_path / "run.html"), str(path)]) == 1


def test_plot_file_type_is_checked_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["ls", "--plot", str(tmp_path / "run.svg"), str(tmp_path / "no-store-here")])
    err = capsys.readouterr().err
    assert code == 2 and "must end in .png or .html" in err and "run.svg" in err


def test_an_empty_timeline_draws_a_page_saying_so(tmp_path: Path) -> None:
    out = tmp_path / "empty.html"
    write_plot(Timeline(series=(), progress_label="step committed"), out)
    assert "No rows." in out.read_text()
