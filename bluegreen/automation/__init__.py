"""Automatic deploys: webhooks (`bluegreen serve`), Git polling (`bluegreen poll`), Jenkins.

The flow, outside in:
  wsgi.py      verify (signatures.py), parse (events.py), match (rules.py), enqueue; answer fast
  poller.py    git ls-remote on watched branches; a new SHA enqueues the same job a push would
  jobqueue.py  durable SQLite queue + history: dedupe, coalescing, interrupted-job reporting
  worker.py    one thread per app lane runs jobs: guards.py (still the branch tip, not a
               repeat, not behind what was deployed, not rolled back - quarantine.py reads
               the app's deploy history), build.py (checkout + build),
               jenkins_trigger.py (remote API) or jenkins_notify.py (fetch + verify artifact),
               then the deploy subprocess (deploy_command.py)
  service.py   waitress (hardened against slow clients: httpserver.py) + the workers,
               clean shutdown on SIGTERM
  cli.py       serve / poll / jobs / release (and a `history` that points to `fab history`)
A deploy always runs as a subprocess, so a crashed deploy never takes the service down.
"""
