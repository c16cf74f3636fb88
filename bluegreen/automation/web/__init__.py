"""The status page (/ui/) and /metrics of `bluegreen serve`: see app.py for the routes."""

from bluegreen.automation.web.app import StatusWeb

__all__ = ["StatusWeb"]
