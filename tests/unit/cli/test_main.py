"""The `meshfed` entry point as a process."""

from __future__ import annotations


def test_a_reader_that_goes_away_gets_no_traceback() -> None:
    """`meshfed ... | head -1`: the pipe closes before the command is done writing; the shell sees SIGPIPE's
    status and nothing on stderr (it printed a BrokenPipeError traceback)."""
    import os
    import subprocess
    import sys

    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line
    try:
        out = subprocess.run([sys.executable, "-m", "federation", "version"], stdout=write, stderr=subprocess.PIPE,
                             text=True, timeout=60, check=False)
    finally:
        os.close(write)
    assert out.returncode == 141
    assert out.stderr == ""
