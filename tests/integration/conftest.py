from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from testkit.demo import build_artifacts
from testkit.nginx import PrivateNginx
from testkit.project import Project, ssh_toml
from testkit.sshd import TestSshd


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_artifacts(tmp_path_factory.mktemp("dist"))


@pytest.fixture(params=["local", "ssh", "ssh-lua"])
def project(request: pytest.FixtureRequest, tmp_path: Path, artifacts: dict[str, Path]
            ) -> Iterator[Project]:
    """The same flows through the `local` host and over real SSH to a loopback sshd, with
    reload switching, and over SSH again with lua (no-reload) switching."""
    lua = request.param.endswith("-lua")
    nginx: PrivateNginx = request.getfixturevalue("private_nginx_lua" if lua else "private_nginx")
    mode = "lua" if lua else "reload"
    if request.param == "local":
        proj = Project(tmp_path / "app", nginx, artifacts, 'app = ["local"]', mode=mode)
    else:
        sshd: TestSshd = request.getfixturevalue("sshd")
        proj = Project(tmp_path / "app", nginx, artifacts, f'app = ["127.0.0.1:{sshd.port}"]',
                       ssh_toml=ssh_toml(sshd), mode=mode)
    proj.write()
    try:
        yield proj
    finally:
        proj.stop_everything()


@pytest.fixture
def ssh_project(tmp_path: Path, private_nginx: PrivateNginx, artifacts: dict[str, Path],
                sshd: TestSshd) -> Iterator[Project]:
    proj = Project(tmp_path / "app", private_nginx, artifacts,
                   f'app = ["127.0.0.1:{sshd.port}"]', ssh_toml=ssh_toml(sshd)).write()
    try:
        yield proj
    finally:
        proj.stop_everything()


@pytest.fixture
def make_project(tmp_path: Path, private_nginx: PrivateNginx, artifacts: dict[str, Path]
                 ) -> Iterator[Callable[..., Project]]:
    made: list[Project] = []

    def make(hosts_toml: str, **kw: str) -> Project:
        proj = Project(tmp_path / f"app{len(made)}", private_nginx, artifacts, hosts_toml,
                       **kw).write()
        made.append(proj)
        return proj
    try:
        yield make
    finally:
        for p in made:
            p.stop_everything()
