from testkit.fixtures import stop_leftover_processes  # noqa: F401  (autouse, session)
