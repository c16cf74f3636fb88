"""The one build rule the automation unit tests share (the service needs at least one)."""

MAIN_RULE = """
[[rules]]
name = "main"
repo = "acme/demo"
branch = "main"
app = "demo"
action = "build"
clone_url = "/srv/demo.git"
build_command = "true"
artifact = "a"
config = "demo.toml"
"""
