"""Build the demo app into a release tarball: dist/demo-<version>.tar.gz.

The tarball holds app.py, bin/runner and a VERSION file, the shape bluegreen expects from
any "tarball with a runner script". A version containing "unhealthy" builds an app whose
/health fails, which tests and the demo use to show a refused deploy.

Usage: python3 examples/demo/build.py VERSION [--out DIR]
"""

from __future__ import annotations

import argparse
import io
import tarfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def build(version: str, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"demo-{version}.tar.gz"
    tmp = target.with_suffix(".tmp")

    def add(tar: tarfile.TarFile, name: str, data: bytes, mode: int) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = mode
        info.mtime = 0  # reproducible: same version, same bytes, same checksum
        tar.addfile(info, io.BytesIO(data))

    # gzip mtime=0 as well, so rebuilding v1 yields an identical checksum (no re-upload)
    with open(tmp, "wb") as raw:
        import gzip

        with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
            with tarfile.open(fileobj=gz, mode="w") as tar:
                add(tar, "app.py", (HERE / "app" / "app.py").read_bytes(), 0o644)
                add(tar, "bin/runner", (HERE / "app" / "bin" / "runner").read_bytes(), 0o755)
                add(tar, "VERSION", f"{version}\n".encode(), 0o644)
    tmp.replace(target)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("version")
    parser.add_argument("--out", type=Path, default=HERE / "dist")
    args = parser.parse_args()
    print(build(args.version, args.out))


if __name__ == "__main__":
    main()
