"""What both nginx drivers share: `nginx -t`, a reload that waits for the old workers, the
front-door check (over TLS when the front door is HTTPS), the error-log scan, the include
integration's snippets, and putting the previous files back.

Each shell command here sits next to the code that reads its output.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

from bluegreen import hosts, httpwire, render
from bluegreen.commands import POLL, q
from bluegreen.errors import BluegreenError
from bluegreen.hosts import Result
from bluegreen.render import front_door, template_path
from bluegreen.routers.base import Applied, ConfigRejected, FrontDoor, Router

NGINX_LIB = r"""
bg_accepting_workers() {  # $1=master pid: workers of this master not yet shutting down
  cat /proc/[0-9]*/stat 2>/dev/null | awk -v m="$1" '{ pid = $1; sub(/^.*\) /, "") }
    $2 == m && $1 != "Z" { print pid }' | while read -r p; do
      c=$(tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null)
      case "$c" in *"shutting down"*|"") ;; *) echo "$p";; esac
    done
}
"""


def nginx_reload_and_wait(nginx_command: str, pid_file: str, timeout: float) -> str:
    """Reload, then wait until every worker that was accepting before has stopped accepting.

    `nginx -s reload` only signals the master. Until the old workers get their turn to
    shut down, they still accept new connections with the old config; a master that
    rejects the config (say, a busy listen port) never replaces them at all. Exit 8 when
    the old generation is still accepting at the deadline.
    """
    pf = q(pid_file)
    return (
        NGINX_LIB
        + f"m=$(cat {pf} 2>/dev/null); "
        + f'if [ -z "$m" ] || [ ! -d "/proc/$m" ]; then echo "nginx master pid file "{pf}'
        + '" is missing or stale: is nginx running?" >&2; exit 6; fi; '
        + 'before=" $(bg_accepting_workers "$m" | tr "\n" " ")"; '
        + f"{nginx_command} -s reload 2>&1 || exit $?; "
        + f"i=0; while [ $i -lt {max(1, int(timeout / POLL)) * 2} ]; do "
        + 'now=$(bg_accepting_workers "$m"); old=0; '
        + 'for p in $now; do case "$before" in *" $p "*) old=1;; esac; done; '
        + '[ $old = 0 ] && [ -n "$now" ] && exit 0; '
        + f"sleep {POLL / 2}; i=$((i+1)); done; "
        + 'echo "nginx kept its old workers accepting after the reload: the master did not '
        + 'apply the new config (see its error log)" >&2; exit 8'
    )



def nginx_test(nginx_command: str) -> str:
    return f"{nginx_command} -t 2>&1"

hosts.SHELL_LIBS.append(NGINX_LIB)
TEST_REJECTED = 10  # exit code of a combined test-and-reload whose test failed


def test_rejection(result: Result) -> str:
    """The last lines of what `nginx -t` said."""
    return "\n    ".join(result.stdout.strip().splitlines()[-6:])


_BLAMED_FILE = re.compile(r" in (/\S+?):\d+")


def blamed_file(output: str) -> str:
    """The file `nginx -t` names in its last complaint ("... in /etc/nginx/x.conf:12")."""
    found = _BLAMED_FILE.findall(output)
    return found[-1] if found else ""


def reload_failure(result: Result) -> str:
    detail = (result.stderr or result.stdout).strip().splitlines()[-3:]
    return "nginx reload did not take: " + " / ".join(detail)


@dataclass
class NginxApplied(Applied):
    """Applied, plus the include integration's snippets this change rewrote (path ->
    what was there before; None: nothing), so a restore puts those back too."""

    snippets: dict[str, str | None] = field(default_factory=dict)


class NginxRouter(Router):
    """nginx with a rendered file; subclasses decide how a change takes effect."""

    def render(self, slot: str, release: str, version: str, generation: int,
               weight: int = 0) -> str:
        return render.render(self.cfg, slot, release, version, generation=generation,
                             mode=self.kind, weight=weight)

    def install(self, text: str) -> Applied:
        """The include integration's snippets first (only when they differ: a plain switch
        rewrites none), then the target; `nginx -t` then sees all of them together."""
        changed: dict[str, str | None] = {}
        try:
            for path, new in render.render_snippets(self.cfg, self.kind).items():
                old = self.host.read(path)
                if old != new:
                    changed[path] = old
                    self.host.write_atomic(path, new)
            base = super().install(text)
        except BaseException:
            self._put_back_snippets(changed)
            raise
        return NginxApplied(base.previous, base.log_offset, snippets=changed)

    def _reload_script(self) -> str:
        n = self.cfg.nginx
        return nginx_reload_and_wait(n.command, n.pid_file, n.verify_timeout)

    def reload(self) -> None:
        result = self.host.run(self._reload_script(), timeout=self.cfg.nginx.verify_timeout + 30,
                               check=False, says="reload nginx, wait for its old workers")
        if not result.ok:
            raise BluegreenError(reload_failure(result), host=self.label, phase="switch",
                                 hint="check the nginx error log and nginx.pid_file")

    def test(self, applied: Applied, *, and_apply: bool = False) -> None:
        script = nginx_test(self.cfg.nginx.command)
        says = "test the new config with nginx -t"
        if and_apply:
            script = f"{script} || exit {TEST_REJECTED}; " + self._reload_script()
            says = "test the new config with nginx -t, then reload nginx (waits for old workers)"
            applied.reloaded = True
        result = self.host.run(script, timeout=self.cfg.nginx.verify_timeout + 30, check=False,
                               says=says)
        if result.rc == TEST_REJECTED or (not and_apply and not result.ok):
            self.restore(dataclasses.replace(applied, reloaded=False, flipped=False))
            blamed = blamed_file(result.stdout)
            ours = {self.target, *self.cfg.nginx_snippets.values()}
            if blamed and blamed not in ours:
                raise ConfigRejected(
                    f"nginx -t rejected the configuration because of {blamed}, which is not "
                    f"this app's file:\n    " + test_rejection(result),
                    host=self.label, phase="switch",
                    hint=f"nothing of this app changed ({self.target} is back); fix {blamed} "
                         "(another app's switch may have been interrupted: its next `fab` "
                         "command recovers it), then re-run")
            raise ConfigRejected(
                "nginx -t rejected the rendered config:\n    " + test_rejection(result),
                host=self.label, phase="switch",
                hint=f"the previous {self.target} is back and nginx was not reloaded; fix "
                     f"{template_path(self.cfg)} and re-run")
        if not result.ok:
            raise BluegreenError(reload_failure(result), host=self.label, phase="switch",
                                 hint="check the nginx error log and nginx.pid_file")

    def verify(self, applied: Applied, slot: str) -> float:
        took = self.wait_front_door(slot)
        self.check_error_log(applied.log_offset)
        return took

    verify_hint = "check the nginx error log; the template must keep the X-Bluegreen-Slot header"

    @property
    def verify_timeout(self) -> float:
        return self.cfg.nginx.verify_timeout

    def door(self) -> FrontDoor:
        cfg = self.cfg
        addr, port = front_door(cfg.nginx.listen)
        server_name = cfg.nginx.server_name if cfg.nginx.server_name not in ("_", "") \
            else "localhost"
        name = server_name.split()[0]
        tls = None
        if cfg.nginx.tls:  # SNI and the certificate's name are the Host we ask for
            tls = httpwire.Tls(
                name, str(cfg.resolve(cfg.nginx.tls_ca_file)) if cfg.nginx.tls_ca_file else "",
                cfg.nginx.tls_verify)
        return FrontDoor(addr, port, name, tls)

    def check_error_log(self, offset: int) -> None:
        """A master can reject a config that passed -t (a busy listen port): only the log
        says so."""
        log = self.cfg.nginx.error_log
        if not log:
            return
        new = self.host.read(log, offset=offset, limit=256 * 1024) or ""
        bad = [line for line in new.splitlines() if "[emerg]" in line or "[alert]" in line]
        if bad:
            raise BluegreenError("nginx logged errors while applying the new config:\n    "
                                 + "\n    ".join(bad[-5:]), host=self.label, phase="verify",
                                 hint=f"see {log}")

    def put_back(self, applied: Applied) -> None:
        """The previous file, and the reload that makes it live again when ours was."""
        self.put_back_file(applied)
        if applied.reloaded:
            self.host.run(self._reload_script(), timeout=self.cfg.nginx.verify_timeout + 30,
                          check=False, says="reload nginx with the previous file")

    def put_back_file(self, applied: Applied) -> None:
        if applied.previous is None:
            self.host.remove(self.target)
        else:
            self.host.write_atomic(self.target, applied.previous)
        if isinstance(applied, NginxApplied):
            self._put_back_snippets(applied.snippets)

    def _put_back_snippets(self, previous: dict[str, str | None]) -> None:
        for path, text in previous.items():
            if text is None:
                self.host.remove(path)
            else:
                self.host.write_atomic(path, text)

