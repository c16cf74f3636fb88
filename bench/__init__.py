"""Benchmarks: one file per measurement, each printing ONE result line last, with its
baseline measured side by side in the same run. Run one as `python -m bench.NAME` from
the repo root, all of them with `python -m bench.run` (`make bench`).

    zero_downtime    failed requests under load across 24 `fab` operations, lua and
                     reload mode, against the classic shell scripts (classic_bench.py)
    startup          CLI start-up: `python -m bluegreen switch` vs `python -c pass`,
                     `fab switch` vs `fab --version`
    switch           `fab switch` / `fab rollback` vs a bare `ssh nginx -t && reload`
    deploy_overhead  deploy wall time minus upload minus the app's own boot
    health           how soon a deploy sees the app healthy, by the app's own clock
    upload           SFTP upload vs OpenSSH scp; a re-deploy sends 0 bytes
    history          `fab status` / `fab deploy` with 1,000 history entries vs none
    memory           peak RSS of `fab deploy`, small vs 100 MiB artifact
    ssh_exec         cost of one remote command on an open connection vs bare ssh

Shared: rig.py (sshd + nginx on loopback, the speed CLI), countapp.py (the demo app with a
request log), report.py (the combined speed line). The test kit (testkit/) provides the
processes, the project writer and fab's output parser. Finished experiments live in
prototypes/ with their findings.
"""
