"""Pure builders of the shell the flow sends to hosts. No I/O here.

Every value that reaches a shell goes through shlex.quote (`q`), including ones we generated
ourselves, so that a path with a space or a version with a `$(...)` in it is only ever data.
Scripts are POSIX-ish bash, rely only on coreutils, procps-less /proc reads and tar, and
bound every wait by a loop count.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from bluegreen.layout import Layout, is_tarball

q = shlex.quote
POLL = 0.05  # seconds between checks in remote wait loops

# ---------------------------------------------------------------- shell helpers

# Functions shared by the process scripts. /proc parsing instead of ss/pgrep keeps the host
# requirements to coreutils + awk; start time (field 22 of /proc/PID/stat) pins a pid's
# identity so a recycled pid is never signalled.
#
# /proc/PID/stat is read with the shell's own `read` and parameter expansion, not sed|cut,
# and each wait loop checks once per turn: every fork is CPU on the host, and a fleet pays
# it on every host at once. Measured (/tmp bench of drain_stop_free + plain_stop on a
# python app, bash, loaded 2-core box): the script's own CPU 41-43 ms -> 12-15 ms a stop.
SHELL_LIB = r"""
bg_stat() {  # $1=pid: sets bg_state (stat field 3) and bg_start (field 22); 1 if gone
  bg_state=; bg_start=
  local line
  { read -r line < "/proc/$1/stat"; } 2>/dev/null || return 1
  # the command name, in parentheses, may hold spaces: cut after its last ") "
  set -- ${line##*") "}
  bg_state=$1; bg_start=${20}
  [ -n "$bg_state" ]
}
bg_starttime() { bg_stat "$1" && echo "$bg_start"; }
bg_alive() {  # $1=pid: running and not a zombie
  bg_stat "$1" && [ "$bg_state" != Z ] && [ "$bg_state" != X ]
}
bg_group_alive() {  # $1=pgid: any live member left (zombies do not count: some inits never reap)
  cat /proc/[0-9]*/stat 2>/dev/null | awk -v g="$1" '{ sub(/^.*\) /, "") }
    $3 == g && $1 != "Z" && $1 != "X" { f = 1 } END { exit !f }'
}
bg_hexport() { printf ':%04X' "$1"; }
# ss answers from a filtered kernel query; scanning /proc/net/tcp gets slow on a host with
# tens of thousands of TIME_WAIT sockets, so it is only the fallback where ss is missing.
bg_listening() {
  if command -v ss >/dev/null 2>&1; then [ -n "$(ss -Htln "sport = :$1" 2>/dev/null)" ]; return; fi
  awk -v p="$(bg_hexport "$1")" 'FNR>1 && $4=="0A" && substr($2, length($2)-4)==p {f=1}
    END {exit !f}' /proc/net/tcp /proc/net/tcp6 2>/dev/null
}
bg_established() {
  if command -v ss >/dev/null 2>&1; then
    ss -Htn state established "( sport = :$1 )" 2>/dev/null | wc -l; return
  fi
  awk -v p="$(bg_hexport "$1")" 'FNR>1 && $4=="01" && substr($2, length($2)-4)==p {n++}
    END {print n+0}' /proc/net/tcp /proc/net/tcp6 2>/dev/null
}
bg_holder() {  # best effort: who listens on $1 (ss shows pids to root)
  command -v ss >/dev/null && ss -Htlnp "sport = :$1" 2>/dev/null | head -3
}
bg_ours() {  # $1=pidfile: the recorded pid is still the process we started
  [ -f "$1" ] || return 1
  local pid st; read -r pid st < "$1" || return 1
  [ -n "$pid" ] && bg_alive "$pid" && [ "$bg_start" = "$st" ]
}
"""


def _loops(seconds: float) -> int:
    return max(1, int(seconds / POLL))


ZIP_SUFFIXES = (".zip", ".war")


def archive_kind(name: str) -> str:
    """tar (unpacked with tar), zip (.zip/.war: unpacked with unzip, a Tomcat docBase) or
    file (placed as it is: a jar, a binary; a jar is a zip too, but it is run whole)."""
    if is_tarball(name):
        return "tar"
    return "zip" if name.lower().endswith(ZIP_SUFFIXES) else "file"


def unpack(artifact: str, release_dir: str, checksum: str, file_name: str, *,
           kind: str = "", drop_artifact: bool = False) -> str:
    """Unpack (tarball, zip/war) or place (single file) into release_dir, atomically, once.

    On failure the partial directory goes, and with `drop_artifact` (it was uploaded by this
    run) the artifact too, so a failed deploy leaves the disk as it found it. The last stderr
    line says what failed and how much space was free at that moment (measured before the
    cleanup): tar's own words for a full disk are only "Wrote only N of M bytes".

    The archive was inspected on the deploying machine (release.inspect: no `..`, no absolute
    names, no links out, no devices) and its sha256 verified here, so these are the bytes that
    were checked; the tools' own defences stay on as a second line: GNU tar refuses `..` and
    strips a leading `/`, unzip does the same for `../` and `/` (exit 1 on a warning counts as
    a failure). --no-same-owner: as root, tar would hand every file to the build machine's uid.
    """
    kind = kind or archive_kind(artifact)
    tmp = f"{release_dir}.partial"
    marker = f"{release_dir}/.bluegreen-release"
    parent = release_dir.rsplit("/", 1)[0] or "/"
    if kind == "tar":
        fill = f"tar --no-same-owner -xf {q(artifact)} -C {q(tmp)}"
    elif kind == "zip":
        # unzip is not on every host (Ansible's unarchive needs it on the target too); the
        # upload phase checks for it before sending anything, this says it again if PATH
        # differs. stdin from /dev/null: unzip prompts (and would wait) on a full disk.
        missing = f"unzip is not installed: it is needed to unpack {file_name}"
        fill = (f"{{ command -v unzip >/dev/null 2>&1 || {{ echo {q(missing)} >&2; false; }}; }} "
                f"&& unzip -qq -o {q(artifact)} -d {q(tmp)} < /dev/null")
    else:
        fill = (f"cp -- {q(artifact)} {q(tmp + '/' + file_name)} && "
                f"chmod 0755 {q(tmp + '/' + file_name)}")
    drop = f"rm -f -- {q(artifact)}; " if drop_artifact else ""
    return (
        f"if [ -f {q(marker)} ]; then echo present; else "
        f"{{ rm -rf -- {q(tmp)} && mkdir -p -- {q(tmp)} && {fill} && "
        f"echo {q(checksum)} > {q(tmp + '/.bluegreen-release')} && "
        f"rm -rf -- {q(release_dir)} && mv -- {q(tmp)} {q(release_dir)}; }} || {{ rc=$?; "
        f"free=$(stat -f -c '%a*%S' -- {q(parent)} 2>/dev/null) && free=$((free)) || free='?'; "
        f"rm -rf -- {q(tmp)}; {drop}"
        f"echo {q(f'cannot unpack {artifact} into {release_dir} (exit ')}"
        f"\"$rc, $free bytes free)\" >&2; exit $rc; }}; echo unpacked; fi"
    )


UNPACK_FAILED = re.compile(r"^cannot unpack .* \(exit \d+, (\d+|\?) bytes free\)$")


def parse_unpack_failure(stderr: str) -> int | None:
    """Bytes free when `unpack` failed, from its last line; None if it did not say."""
    for line in reversed(stderr.strip().splitlines()):
        m = UNPACK_FAILED.match(line.strip())
        if m:
            return int(m.group(1)) if m.group(1).isdigit() else None
    return None


def env_file(env: dict[str, str]) -> str:
    """Shell-sourceable KEY='value' lines: the app's environment stays out of command lines,
    process listings, dry-run output and error messages (it may hold secrets)."""
    return "".join(f"{k}={q(v)}\n" for k, v in env.items())


def execable(start: str) -> str:
    """`exec` a simple command so the app itself holds the pid and gets signals directly;
    a compound command (cd x && java ...) keeps its shell, and the group kill covers both."""
    compound = any(tok in start for tok in (";", "&&", "||", "|", "\n", "&"))
    return start if compound else "exec " + start


def plain_start(layout: Layout, slot: str, release_dir: str, start: str) -> str:
    """Start `start` detached (setsid, own process group), record pid + start time.

    The environment comes from slots/<slot>/env (written 0600 beforehand). stdin, stdout
    and stderr all leave the SSH channel, or the channel would stay open until the app
    exits. The previous log is kept as app.log.1 for the failure report.
    """
    pidfile, log = layout.pidfile(slot), layout.logfile(slot)
    envfile = f"{layout.slot_dir(slot)}/env"
    return (
        SHELL_LIB
        + f"mkdir -p {q(layout.slot_dir(slot))}; "
        + f"[ -f {q(log)} ] && mv -f {q(log)} {q(log + '.1')}; "
        + f"cd {q(release_dir)} || exit 4; "
        + f"set -a; . {q(envfile)} || exit 5; set +a; "
        + f"setsid sh -c {q(execable(start))} >> {q(log)} 2>&1 < /dev/null & "
        + "pid=$!; "
        + f'echo "$pid $(bg_starttime $pid)" > {q(pidfile + ".tmp")} && '
        + f"mv -f {q(pidfile + '.tmp')} {q(pidfile)}; echo $pid"
    )



def plain_stop(layout: Layout, slot: str, stop_timeout: float) -> str:
    """TERM the slot's process group, bounded wait, then KILL. Never a pid we did not start."""
    pidfile = layout.pidfile(slot)
    return (
        SHELL_LIB
        + f"pf={q(pidfile)}; "
        + 'if [ ! -f "$pf" ]; then echo "none"; exit 0; fi; '
        + 'if ! bg_ours "$pf"; then rm -f "$pf"; echo "gone"; exit 0; fi; '
        + 'read -r pid st < "$pf"; '
        + 'kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null; '
        # while the leader lives, reading its own stat is enough; the scan of every
        # process for the rest of its group runs only once the leader is gone, and each
        # check is made once (no second scan after the loop)
        + "i=0; while :; do "
        + 'if { bg_alive "$pid" && [ "$bg_start" = "$st" ]; } || bg_group_alive "$pid"; then '
        + f'if [ $i -ge {_loops(stop_timeout)} ]; then kill -KILL -- "-$pid" 2>/dev/null; '
        + 'echo "killed"; break; fi; '
        + f"sleep {POLL}; i=$((i+1)); "
        + 'else echo "stopped"; break; fi; done; rm -f "$pf"'
    )





def tail_log(path: str, lines: int = 30) -> str:
    return f"tail -n {int(lines)} -- {q(path)} 2>/dev/null || true"


def link_slot_release(layout: Layout, slot: str, release_dir: str) -> str:
    """slots/<slot>/release -> the release dir, swapped atomically (ln to temp, mv -T)."""
    link = f"{layout.slot_dir(slot)}/release"
    return (f"ln -sfn -- {q(release_dir)} {q(link + '.tmp')} && "
            f"mv -Tf -- {q(link + '.tmp')} {q(link)}")


def prune_releases(layout: Layout, keep: int, protected: list[str]) -> str:
    """Delete all but the newest `keep` releases, never one a slot uses; then orphaned artifacts."""
    keep_names = " ".join(q(p) for p in protected if p) or "''"
    return (
        f"( cd {q(layout.releases)} 2>/dev/null || exit 0; n=0; "
        f"for d in $(ls -1t); do case \"$d\" in *.partial) continue;; esac; n=$((n+1)); "
        f"skip=0; for k in {keep_names}; do [ \"$d\" = \"$k\" ] && skip=1; done; "
        f"if [ $skip = 0 ] && [ $n -gt {int(keep)} ]; then "
        f"rm -rf -- \"$d\" && echo \"pruned $d\"; fi; "
        f"done; "
        # artifacts no kept release was made from
        f"cd {q(layout.artifacts)} 2>/dev/null || exit 0; "
        f"for a in *; do [ -f \"$a\" ] || continue; sum=\"${{a%%.*}}\"; "
        f"grep -qsx \"$sum\" {q(layout.releases)}/*/.bluegreen-release || rm -f -- \"$a\"; done ); "
        # and what interrupted runs left (the artifact glob above skips dotfiles)
        + clean_stale(layout)
    )


STALE_MINUTES = 5  # a partial upload or unpack not written to for this long is a leftover


def clean_stale(layout: Layout) -> str:
    """Remove partial uploads (.upload-*) and partial release dirs (*.partial) left by runs
    that died. Runs hold the lock while they write these, so one untouched for STALE_MINUTES
    is not being written; a fresh one may belong to a run whose lock was broken by hand, and
    stays. Prints `removed stale NAME` per item."""
    age = f"-mmin +{STALE_MINUTES}"
    return (
        f"find {q(layout.artifacts)} -maxdepth 1 -type f -name '.upload-*' {age} "
        f"-exec rm -f -- {{}} \\; -printf 'removed stale %f\\n' 2>/dev/null; "
        f"find {q(layout.releases)} -mindepth 1 -maxdepth 1 -type d -name '*.partial' {age} "
        f"-exec rm -rf -- {{}} \\; -printf 'removed stale %f\\n' 2>/dev/null; true"
    )


def free_space(path: str) -> str:
    """Bytes an unprivileged writer may still use on the file system holding `path` (the
    statvfs f_bavail: root's reserved blocks do not count). SshHost asks over SFTP instead
    and sends this only to servers without the statvfs extension."""
    return f"stat -f -c '%a %S' -- {q(path)}"


def parse_free_space(stdout: str) -> int | None:
    words = stdout.split()
    if len(words) != 2 or not all(w.isdigit() for w in words):
        return None
    return int(words[0]) * int(words[1])


def list_releases(layout: Layout) -> str:
    return (f"cd {q(layout.releases)} 2>/dev/null && for d in $(ls -1t); do "
            f"[ -f \"$d/.bluegreen-release\" ] && echo \"$d $(stat -c %Y \"$d\")\"; done; true")


def parse_list_releases(stdout: str) -> list[tuple[str, int]]:
    """(release id, mtime) per line of what `list_releases` prints, newest first."""
    rows = []
    for line in stdout.splitlines():
        name, _, mtime = line.partition(" ")
        if name:
            rows.append((name, int(mtime) if mtime.isdigit() else 0))
    return rows








def finalize_upload(tmp: str, final: str, checksum: str) -> str:
    """Verify the uploaded bytes before they get their real name; a torn upload never does."""
    return (
        f"actual=$(sha256sum -- {q(tmp)} | cut -c1-64); "
        f'if [ "$actual" != {q(checksum)} ]; then rm -f -- {q(tmp)}; '
        f'echo "checksum mismatch after upload: expected {checksum}, got $actual" >&2; exit 3; '
        f"fi; mv -f -- {q(tmp)} {q(final)}"
    )


def drain_stop_free(port: int, drain_timeout: float, stop_script: str,
                    free_timeout: float) -> str:
    """One round trip: drain the slot's connections, stop it, make sure the port is free.

    Drain: after a switch, nginx's old workers keep serving their in-flight requests to the
    old slot and close those connections as they finish; 0 established connections means
    nothing is cut. Prints `drain-left N` (N > 0: the drain timeout expired).
    Stop: the backend's script, in a subshell so its early exits stay local.
    Free: whatever still listens on the port now is not ours; exit 7 names it instead of
    killing it.
    """
    drain = "" if drain_timeout <= 0 else (  # 0: drained elsewhere (lua mode counts requests)
        f"i=0; while [ \"$(bg_established {port})\" -gt 0 ] && "
        f"[ $i -lt {_loops(drain_timeout)} ]; do sleep {POLL}; i=$((i+1)); done; "
        f'echo "drain-left $(bg_established {port})"; ')
    return (
        SHELL_LIB
        + drain
        + f"( {stop_script} ) || exit $?; "
        + f"i=0; while bg_listening {port}; do "
        + f"if [ $i -ge {_loops(free_timeout)} ]; then echo \"port {port} is held by a "
        + f"process bluegreen did not start: $(bg_holder {port})\" >&2; exit 7; fi; "
        + f"sleep {POLL}; i=$((i+1)); done"
    )


STOP_OUTCOMES = ("none", "gone", "stopped", "killed")


@dataclass(frozen=True)
class StopReport:
    connections_left: int  # still established when the drain timeout expired
    outcome: str  # none | gone | stopped | killed


def parse_drain_stop_free(stdout: str) -> StopReport:
    """What `drain_stop_free` printed: `drain-left N`, then the stop script's last word."""
    words = stdout.split()
    left = 0
    if "drain-left" in words:
        after = words.index("drain-left") + 1
        left = int(words[after]) if after < len(words) and words[after].isdigit() else 0
    outcome = next((w for w in reversed(words) if w in STOP_OUTCOMES), "stopped")
    return StopReport(left, outcome)
