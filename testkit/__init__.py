"""The one test kit: what tests/ and bench/ both need to drive bluegreen for real.

    procs      start processes, remember their PIDs, stop them by PID (never by name)
    ports      free ports, wait for a port
    nginx      a private nginx under a prefix directory (optionally with the lua module)
    sshd       a throwaway OpenSSH server with its own keys and port
    netns      separate "hosts" as network namespaces, each with its own sshd
    demo       the bundled demo app (examples/demo) built into release tarballs
    project    a user's app repository (bluegreen.toml + fabfile.py) and `fab` run in it
    fabout     the parser of what `fab` prints (phase lines, the summary line)
    loadgen    a load client that records every request, never retrying
    underload  N `fab` operations in a row under load: the zero-failed-requests check
    fixtures   pytest fixtures shared by tests/ and bench/tests/ (the PID safety net)

Installed with the project (`pip install -e '.[dev]'`), so `import testkit` works from
anywhere; nothing here edits sys.path. Nothing here imports tests/ or bench/.
"""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
