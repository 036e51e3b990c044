"""Exports and INT8 copies are written into ``OUT.partial`` and renamed at the end: a kill never
leaves a half-written ``OUT``, and the next run clears a killed run's leftovers."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from jaxdl.errors import UserError
from jaxdl.export.artifact import staged_directory


def test_the_directory_appears_only_when_the_block_finishes(tmp_path):
    out = tmp_path / "export"
    with staged_directory(str(out), "export directory") as staging:
        assert staging == f"{out}.partial" and not out.exists()
        (tmp_path / "export.partial" / "graph").write_text("g")
    assert (out / "graph").read_text() == "g"
    assert not (tmp_path / "export.partial").exists()


def test_an_empty_existing_directory_is_filled_and_a_non_empty_one_refused(tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    with staged_directory(str(out), "export directory") as staging:
        (tmp_path / "export.partial" / "graph").write_text("g")
        assert os.path.isdir(staging)
    assert os.listdir(out) == ["graph"]
    refused = pytest.raises(UserError, match=f"export directory {out} exists and is not empty")
    with refused, staged_directory(str(out), "export directory"):
        pytest.fail("the block must not run")


def test_an_error_inside_the_block_leaves_nothing(tmp_path):
    out = tmp_path / "export"
    with pytest.raises(KeyboardInterrupt), staged_directory(str(out), "export dir") as staging:
        open(os.path.join(staging, "graph"), "w").close()
        raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []


def test_a_killed_run_leaves_no_output_and_the_rerun_clears_its_leftovers(tmp_path, capsys):
    out = tmp_path / "export"
    script = textwrap.dedent(
        f"""
        import os, time
        from jaxdl.export.artifact import staged_directory
        with staged_directory({str(out)!r}, "export directory") as staging:
            open(os.path.join(staging, "half_written_graph"), "w").close()
            print("writing", flush=True)
            time.sleep(60)
        """
    )
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "writing"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert not out.exists() and (tmp_path / "export.partial" / "half_written_graph").exists()
    started = time.monotonic()
    with staged_directory(str(out), "export directory") as staging:
        assert os.listdir(staging) == []  # the killed run's file is gone
    assert time.monotonic() - started < 5
    assert f"removing {out}.partial, left by an interrupted run" in capsys.readouterr().out
    assert os.listdir(out) == [] and not (tmp_path / "export.partial").exists()
