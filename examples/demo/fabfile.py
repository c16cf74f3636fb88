from bluegreen.tasks import ns  # noqa: F401 - fab finds the task collection here
