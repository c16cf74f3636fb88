from testkit.fixtures import (  # noqa: F401  (autouse)
    stop_leftover_processes,
    stop_this_tests_apps,
)
