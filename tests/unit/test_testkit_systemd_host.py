"""testkit/systemd_host.py's pure parts: why it cannot run, and the sudoers line it installs
(which must be the README's, word for word)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from testkit import REPO
from testkit import systemd_host as sd


def test_a_missing_tool_is_named_with_the_package_to_install(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sd.os, "geteuid", lambda: 0)
    real = shutil.which
    monkeypatch.setattr(sd.shutil, "which",
                        lambda name: None if name == "systemd-nspawn" else real(name))
    reason = sd.unavailable_reason()
    assert reason is not None
    assert "`systemd-nspawn` is not installed: apt-get install systemd-container" in reason


def test_not_root_is_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sd.os, "geteuid", lambda: 1000)
    assert sd.unavailable_reason() == "needs root (systemd-nspawn and debootstrap run as root)"


def test_the_sudoers_line_is_the_readmes() -> None:
    readme = " ".join((REPO / "README.md").read_text().split())  # its line is wrapped
    line = sd.sudoers_text("demo").strip()
    assert f"sudoers `{line}`" in readme, line


def test_a_stamp_of_another_version_means_rebuild(tmp_path: Path) -> None:
    (tmp_path / ".bluegreen-rootfs").write_text("0 bookworm systemd\n")
    assert not sd.rootfs_ready(tmp_path)
    (tmp_path / ".bluegreen-rootfs").write_text(sd._stamp_text() + "\n")
    assert sd.rootfs_ready(tmp_path)
