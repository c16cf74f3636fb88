"""Artifacts as classic servers have them: tarballs, single files, .zip and .war.

Every archive is inspected on the deploying machine before anything is uploaded: a corrupt
archive, or one whose members would land outside the release directory (`..`, absolute
paths, symlinks or hard links pointing out, device files), is refused with the member and
the reason. Then the host-side pieces: unpacking a zip/war like a tarball, cleaning up after
a failed unpack, pruning what interrupted runs left, and reading free space.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import tarfile
import time
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from bluegreen import commands, release
from bluegreen.errors import BluegreenError
from bluegreen.layout import Layout

BLOCK = 4096


def run(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30,
                          check=False)


# ---------------------------------------------------------------- archive builders

Member = tuple[str, str, object]  # (name, kind, data or link target or mode)


def make_tar(path: Path, members: list[Member]) -> Path:
    mode = "w:gz" if path.name.endswith(".gz") else "w"
    with tarfile.open(path, mode) as tar:
        for name, kind, extra in members:
            info = tarfile.TarInfo(name)
            info.mtime = 0
            if kind == "file":
                data = extra if isinstance(extra, bytes) else b"x"
                info.size, info.mode = len(data), 0o755 if name.startswith("bin/") else 0o644
                tar.addfile(info, io.BytesIO(data))
                continue
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, str(extra)
            elif kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, str(extra)
            elif kind == "chr":
                info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
            elif kind == "blk":
                info.type, info.devmajor, info.devminor = tarfile.BLKTYPE, 8, 0
            elif kind == "fifo":
                info.type = tarfile.FIFOTYPE
            tar.addfile(info)
    return path


def make_zip(path: Path, members: list[Member]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names are one of the attacks
        for name, kind, extra in members:
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            info.create_system = 3  # made on Unix: the mode bits below are honoured by unzip
            data = b""
            if kind == "file":
                data = extra if isinstance(extra, bytes) else b"x"
                mode = 0o755 if name.startswith("bin/") else 0o644
                info.external_attr = (stat.S_IFREG | mode) << 16
            elif kind == "dir":
                info.external_attr = ((stat.S_IFDIR | 0o755) << 16) | 0x10
            elif kind == "symlink":
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
                data = str(extra).encode()
            elif kind == "chr":
                info.external_attr = (stat.S_IFCHR | 0o644) << 16
            elif kind == "encrypted":
                info.external_attr = (stat.S_IFREG | 0o644) << 16
                info.flag_bits |= 0x1
                data = b"secret"
            zf.writestr(info, data)
    if any(kind == "encrypted" for _, kind, _ in members):
        # zipfile clears the flags it is given: set "encrypted" (bit 0) in the local and the
        # central header of the (single) member by hand
        raw = bytearray(path.read_bytes())
        for signature, flags_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
            raw[raw.index(signature) + flags_at] |= 0x1
        path.write_bytes(bytes(raw))
    return path


def make(path: Path, members: list[Member]) -> Path:
    return make_zip(path, members) if path.suffix in (".zip", ".war") else make_tar(path, members)


GOOD: list[Member] = [
    ("WEB-INF/", "dir", None),
    ("WEB-INF/web.xml", "file", b"<web-app/>\n"),
    ("index.html", "file", b"hello\n"),
    ("bin/run", "file", b"#!/bin/sh\necho run\n"),
    ("current", "symlink", "bin"),  # a symlink that stays inside is fine
    ("static/latest", "symlink", "../index.html"),
]

ARCHIVES = ["app.tar.gz", "app.tar", "app.zip", "app.war"]

# (attack, members, words the refusal must contain), for every archive type
ATTACKS: list[tuple[str, list[Member], str]] = [
    ("dotdot", [("ok", "file", b"1"), ("../evil", "file", b"x")], "'../evil'"),
    ("dotdot-inside-path", [("a/../../evil", "file", b"x")], "'a/../../evil'"),
    ("absolute", [("/etc/cron.d/evil", "file", b"x")], "absolute path"),
    ("symlink-absolute", [("etc", "symlink", "/etc")], "points outside"),
    ("symlink-dotdot", [("up", "symlink", "../../outside")], "points outside"),
    ("symlink-chain", [("here", "symlink", "."), ("out", "symlink", "here/..")],
     "points outside"),
    ("symlink-in-subdir", [("sub/", "dir", None), ("sub/up", "symlink", "../..")],
     "points outside"),
    ("symlink-loop", [("a", "symlink", "b"), ("b", "symlink", "a")], "loop"),
]
TAR_ONLY: list[tuple[str, list[Member], str]] = [
    ("hardlink-dotdot", [("h", "hardlink", "../../etc/passwd")], "hard link"),
    ("hardlink-absolute", [("h", "hardlink", "/etc/passwd")], "hard link"),
    ("hardlink-not-in-archive", [("h", "hardlink", "etc/passwd")], "hard link"),
    ("char-device", [("null", "chr", None)], "device"),
    ("block-device", [("sda", "blk", None)], "device"),
    ("fifo", [("pipe", "fifo", None)], "fifo"),
]
ZIP_ONLY: list[tuple[str, list[Member], str]] = [
    ("backslash-dotdot", [("..\\evil", "file", b"x")], "'..\\\\evil'"),
    ("drive-letter", [("C:/evil", "file", b"x")], "absolute path"),
    ("char-device", [("null", "chr", None)], "device"),
    ("encrypted", [("secret", "encrypted", None)], "encrypted"),
    ("duplicate", [("index.html", "file", b"a"), ("index.html", "file", b"b")], "twice"),
]


def cases() -> list[tuple[str, str, list[Member], str]]:
    out = []
    for name in ARCHIVES:
        extra = ZIP_ONLY if name.endswith((".zip", ".war")) else TAR_ONLY
        for attack, members, words in [*ATTACKS, *extra]:
            out.append((name, attack, members, words))
    return out


@pytest.mark.parametrize(("name", "attack", "members", "words"), cases(),
                         ids=[f"{c[0]}-{c[1]}" for c in cases()])
def test_a_bad_archive_is_refused_before_upload(tmp_path: Path, name: str, attack: str,
                                                 members: list[Member], words: str) -> None:
    path = make(tmp_path / name, members)
    with pytest.raises(BluegreenError) as err:
        release.inspect(path)
    text = err.value.render()
    assert words in text, text
    assert str(path) in err.value.what and "refused" in err.value.what
    assert err.value.host == "local" and "Traceback" not in text
    assert "nothing was uploaded" in err.value.hint


CORRUPTIONS: dict[str, Callable[[bytes], bytes]] = {
    "garbage": lambda raw: b"this is not an archive at all" * 10,
    "truncated": lambda raw: raw[: len(raw) // 2],
    "bit-flip": lambda raw: raw[: len(raw) // 2] + bytes([raw[len(raw) // 2] ^ 0xFF])
    + raw[len(raw) // 2 + 1:],
}


def big_good(path: Path) -> Path:
    # incompressible members, stored as written, so that any flipped byte lands in data
    blobs: list[Member] = [(f"lib/{i}.bin", "file", os.urandom(30000)) for i in range(3)]
    return make(path, [*GOOD, *blobs])


@pytest.mark.parametrize("name", ["app.tar.gz", "app.tar.xz", "app.zip", "app.war"])
@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_a_corrupt_archive_is_refused(tmp_path: Path, name: str, corruption: str) -> None:
    if name.endswith(".xz"):
        path = tmp_path / name
        with tarfile.open(path, "w:xz") as tar:
            for i in range(3):
                data = os.urandom(30000)
                info = tarfile.TarInfo(f"lib/{i}.bin")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    else:
        path = big_good(tmp_path / name)
    path.write_bytes(CORRUPTIONS[corruption](path.read_bytes()))
    with pytest.raises(BluegreenError) as err:
        release.inspect(path)
    assert "not a valid" in err.value.what or "corrupt" in err.value.what, err.value.what
    assert str(path) in err.value.what


def test_a_plain_tar_with_a_damaged_header_mid_way_is_refused(tmp_path: Path) -> None:
    """tarfile stops quietly at a bad header after the first member (GNU tar would skip on
    and fail on the host): what follows the last member must be the zero trailer."""
    path = make_tar(tmp_path / "app.tar", [("a", "file", b"1" * 600), ("b", "file", b"2")])
    raw = bytearray(path.read_bytes())
    second = 512 + 1024  # header, 600 bytes of data padded to 1024, then the next header
    raw[second:second + 8] = b"XXXXXXXX"
    path.write_bytes(bytes(raw))
    with pytest.raises(BluegreenError) as err:
        release.inspect(path)
    assert "corrupt" in err.value.what


@pytest.mark.parametrize("name", ARCHIVES)
def test_a_good_archive_is_accepted_with_its_unpacked_size(tmp_path: Path, name: str) -> None:
    path = make(tmp_path / name, GOOD)
    art = release.inspect(path)
    assert art.kind == ("zip" if name.endswith((".zip", ".war")) else "tar")
    # each file rounded up to a block, each directory (listed or implied) one block
    files = sum(-(-len(d) // BLOCK) * BLOCK for _, k, d in GOOD
                if k == "file" and isinstance(d, bytes))
    dirs = 3 * BLOCK  # WEB-INF, bin, static
    assert art.unpacked_size == files + dirs
    assert art.stored_name.endswith({"app.tar.gz": ".tar.gz", "app.tar": ".tar",
                                     "app.zip": ".zip", "app.war": ".war"}[name])


def test_a_single_file_artifact_is_not_inspected_as_an_archive(tmp_path: Path) -> None:
    jar = tmp_path / "app.jar"  # a jar is a zip too, but it is run as one file
    make_zip(jar, [("../not-unpacked", "file", b"x")])
    art = release.inspect(jar)
    assert art.kind == "file" and art.stored_name == art.checksum
    assert art.unpacked_size == -(-art.size // BLOCK) * BLOCK


# ---------------------------------------------------------------- unpacking on the host

needs_unzip = pytest.mark.skipif(shutil.which("unzip") is None,
                                 reason="unzip is not installed on this machine")


@needs_unzip
@pytest.mark.parametrize("name", ["app.zip", "app.war"])
def test_zip_and_war_unpack_into_the_release_like_a_tarball(tmp_path: Path, name: str) -> None:
    art = make_zip(tmp_path / name, GOOD)
    rel = tmp_path / "releases" / "r1"
    rel.parent.mkdir()
    res = run(commands.unpack(str(art), str(rel), "sum1", name, kind="zip"))
    assert res.returncode == 0 and "unpacked" in res.stdout, res.stderr
    assert (rel / "WEB-INF" / "web.xml").read_bytes() == b"<web-app/>\n"
    assert (rel / "index.html").read_bytes() == b"hello\n"
    assert os.access(rel / "bin" / "run", os.X_OK)  # unix modes survive
    assert os.readlink(rel / "current") == "bin"
    assert not (rel / name).exists()  # the archive itself is not a file of the docBase
    assert (rel / ".bluegreen-release").read_text().strip() == "sum1"
    again = run(commands.unpack(str(art), str(rel), "sum1", name, kind="zip"))
    assert again.stdout.strip() == "present"


def test_the_kind_of_an_unpack_follows_the_file_name() -> None:
    assert "unzip" in commands.unpack("/a/x.war", "/r/1", "s", "x.war")
    assert "unzip" in commands.unpack("/a/x.ZIP", "/r/1", "s", "x.zip")
    assert "tar " in commands.unpack("/a/x.tgz", "/r/1", "s", "x.tgz")
    jar = commands.unpack("/a/x.jar", "/r/1", "s", "x.jar")
    assert "unzip" not in jar and "cp -- " in jar


def test_zip_unpack_names_a_missing_unzip(tmp_path: Path) -> None:
    art = make_zip(tmp_path / "app.war", GOOD)
    rel = tmp_path / "r1"
    bare = tmp_path / "bin"
    bare.mkdir()
    for tool in ("bash", "rm", "mkdir", "mv", "stat", "awk", "cat"):
        found = shutil.which(tool)
        assert found
        (bare / tool).symlink_to(found)
    script = commands.unpack(str(art), str(rel), "s", "app.war", kind="zip")
    res = subprocess.run([str(bare / "bash"), "-c", script], capture_output=True, text=True,
                         env={"PATH": str(bare)}, timeout=30, check=False)
    assert res.returncode != 0
    assert "unzip is not installed" in res.stderr
    assert not rel.exists() and not Path(f"{rel}.partial").exists()


def test_tar_unpack_does_not_keep_the_archive_owner(tmp_path: Path) -> None:
    """As root, tar would restore the build machine's uid on every file; the release belongs
    to the deploying user, as with a zip or a single file."""
    path = tmp_path / "app.tar"
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("f")
        info.size, info.uid, info.gid = 1, 4242, 4242
        tar.addfile(info, io.BytesIO(b"x"))
    rel = tmp_path / "r1"
    assert run(commands.unpack(str(path), str(rel), "s", "app.tar")).returncode == 0
    assert (rel / "f").stat().st_uid == os.getuid()


def test_a_failed_unpack_removes_its_partial_dir_and_a_fresh_artifact(tmp_path: Path) -> None:
    art = tmp_path / "sum.tar.gz"
    good = make_tar(tmp_path / "good.tar.gz", [("a", "file", os.urandom(100000))]).read_bytes()
    art.write_bytes(good[: len(good) // 2])  # tar writes part of `a`, then fails
    rel = tmp_path / "releases" / "r1"
    rel.parent.mkdir()
    res = run(commands.unpack(str(art), str(rel), "s", "x.tar.gz", drop_artifact=True))
    assert res.returncode != 0
    assert not rel.exists() and not Path(f"{rel}.partial").exists()
    assert not art.exists()  # uploaded by this run and unusable: it goes too
    # the last line says what failed and how much space was left at that moment
    assert res.stderr.strip().splitlines()[-1].startswith(f"cannot unpack {art} into {rel}")
    free = commands.parse_unpack_failure(res.stderr)
    assert free is not None and free > 0


def test_a_failed_unpack_keeps_an_artifact_stored_by_an_earlier_run(tmp_path: Path) -> None:
    art = tmp_path / "sum.tar.gz"
    art.write_bytes(b"not a tarball")
    rel = tmp_path / "r1"
    res = run(commands.unpack(str(art), str(rel), "s", "x.tar.gz"))
    assert res.returncode != 0 and art.exists()
    assert not Path(f"{rel}.partial").exists()


def test_prune_removes_stale_partial_uploads_and_release_dirs(tmp_path: Path) -> None:
    layout = Layout(str(tmp_path))
    arts, rels = Path(layout.artifacts), Path(layout.releases)
    arts.mkdir()
    rels.mkdir()
    old = time.time() - 3600
    for p in (arts / ".upload-old1", arts / ".upload-new1"):
        p.write_bytes(b"partial")
    os.utime(arts / ".upload-old1", (old, old))
    for d in (rels / "r1.partial", rels / "r2.partial"):
        (d / "sub").mkdir(parents=True)
        (d / "sub" / "f").write_text("x")
    os.utime(rels / "r1.partial", (old, old))
    out = run(commands.prune_releases(layout, 3, [])).stdout
    left = sorted(p.name for p in arts.iterdir()) + sorted(p.name for p in rels.iterdir())
    # an upload or unpack still being written (a run whose lock was broken) stays
    assert left == [".upload-new1", "r2.partial"], out
    assert "removed stale .upload-old1" in out and "removed stale r1.partial" in out


def test_clean_stale_removes_only_old_leftovers(tmp_path: Path) -> None:
    layout = Layout(str(tmp_path))
    arts = Path(layout.artifacts)
    arts.mkdir(parents=True)
    old = time.time() - 3600
    (arts / ".upload-a").write_bytes(b"x" * 10)
    os.utime(arts / ".upload-a", (old, old))
    (arts / "kept.tar.gz").write_bytes(b"x")
    res = run(commands.clean_stale(layout))
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in arts.iterdir()) == ["kept.tar.gz"]


def test_free_space_command_and_local_host_agree_with_statvfs(tmp_path: Path) -> None:
    from bluegreen import config
    from bluegreen.hosts import LocalHost

    st = os.statvfs(tmp_path)
    want = st.f_bavail * st.f_frsize
    out = run(commands.free_space(str(tmp_path)))
    got = commands.parse_free_space(out.stdout)
    assert got is not None and abs(got - want) < 64 << 20  # other sessions write meanwhile
    assert commands.parse_free_space("") is None
    assert commands.parse_free_space("garbage\n") is None
    cfg = config.from_dict({"app": "demo", "start": "x"})
    host = LocalHost(cfg.hosts.app[0], cfg)
    local = host.free_space(str(tmp_path))
    assert local is not None and abs(local - want) < 64 << 20
    assert host.free_space(str(tmp_path / "missing")) is None


def test_space_commands_quote_every_path(tmp_path: Path) -> None:
    nasty = f"{tmp_path}/a b/$(touch /tmp/bluegreen-pwned)`id`"
    for script in (commands.free_space(nasty), commands.clean_stale(Layout(nasty)),
                   commands.unpack(f"{nasty}/x.war", f"{nasty}/r", "s", "x.war"),
                   commands.unpack(f"{nasty}/x.war", f"{nasty}/r", "s", "x.war",
                                   drop_artifact=True)):
        run(script)
    assert not Path("/tmp/bluegreen-pwned").exists()


@pytest.mark.parametrize("name", ARCHIVES)
def test_members_written_through_a_symlink_are_refused(tmp_path: Path, name: str) -> None:
    """`d -> sub` and `d/up -> ..` look harmless one by one; `m -> d/up/..` then climbs out
    (sub/up is the root, and its parent is outside). Refusing anything written through a
    link of the archive keeps every member where its name says."""
    path = make(tmp_path / name, [("sub/", "dir", None), ("d", "symlink", "sub"),
                                  ("d/up", "symlink", ".."), ("m", "symlink", "d/up/..")])
    with pytest.raises(BluegreenError) as err:
        release.inspect(path)
    assert "'d/up'" in err.value.what and "goes through 'd'" in err.value.what


class FakeSftp:
    def __init__(self, answer: object) -> None:
        self.answer = answer
        self.asked: list[tuple[object, ...]] = []

    def _request(self, *args: object) -> object:
        self.asked.append(args)
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer


def ssh_host_with(sftp: FakeSftp, monkeypatch: pytest.MonkeyPatch,
                  shell_says: str = "") -> tuple[object, list[str]]:
    from bluegreen import config
    from bluegreen.hosts import Result, SshHost

    cfg = config.from_dict({"app": "demo", "start": "x", "hosts": {"app": ["app1"]}})
    host = SshHost(cfg.hosts.app[0], cfg)
    sent: list[str] = []

    def exec_(command: str, timeout: float) -> Result:
        sent.append(command)
        return Result(command, 0, shell_says, "")
    monkeypatch.setattr(host, "sftp", lambda: sftp)
    monkeypatch.setattr(host, "_exec", exec_)
    return host, sent


def test_ssh_free_space_reads_the_statvfs_reply_without_a_command(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from paramiko.message import Message
    from paramiko.sftp import CMD_EXTENDED, CMD_EXTENDED_REPLY

    msg = Message()
    for value in (4096, 4096, 1000, 600, 500, 10, 9, 8, 1, 0, 255):  # struct statvfs
        msg.add_int64(value)
    msg.rewind()
    sftp = FakeSftp((CMD_EXTENDED_REPLY, msg))
    host, sent = ssh_host_with(sftp, monkeypatch)
    assert host.free_space("/srv") == 500 * 4096  # type: ignore[attr-defined]
    assert sftp.asked == [(CMD_EXTENDED, "statvfs@openssh.com", "/srv")] and sent == []


def test_ssh_free_space_falls_back_to_one_command_without_the_extension(
        monkeypatch: pytest.MonkeyPatch) -> None:
    host, sent = ssh_host_with(FakeSftp(OSError("Operation unsupported")), monkeypatch,
                               shell_says="250 4096\n")
    assert host.free_space("/srv") == 250 * 4096  # type: ignore[attr-defined]
    assert len(sent) == 1 and "stat -f" in sent[0]


def test_ssh_free_space_of_a_missing_path_is_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    import errno as errno_

    host, sent = ssh_host_with(FakeSftp(OSError(errno_.ENOENT, "No such file")), monkeypatch)
    assert host.free_space("/nope") is None and sent == []  # type: ignore[attr-defined]
