"""bluegreen: blue-green, zero-downtime deploys of one app to hosts behind nginx."""

__version__ = "0.1.0"
