"""The bundled demo app (examples/demo), built into release tarballs as `make demo` does.

examples/demo/build.py stays the one builder (a CLI for `make demo` and the automation
tests' build command); it is loaded here by its path, not through sys.path.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

from testkit import REPO

DEMO_DIR = REPO / "examples" / "demo"
DEMO_APP = DEMO_DIR / "app" / "app.py"
# what the deploy tests ship: three healthy versions and one whose /health fails
VERSIONS = ("v1", "v2", "v3", "v4-unhealthy")


@functools.cache
def _builder() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bluegreen_demo_build", DEMO_DIR / "build.py")
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {DEMO_DIR / 'build.py'}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build(version: str, out_dir: Path) -> Path:
    """dist tarball of the demo app at VERSION (reproducible: same version, same bytes). A
    version containing "unhealthy" builds an app whose /health fails."""
    return _builder().build(version, out_dir)  # type: ignore[no-any-return]


def build_artifacts(out_dir: Path, versions: Iterable[str] = VERSIONS) -> dict[str, Path]:
    return {v: build(v, out_dir) for v in versions}
