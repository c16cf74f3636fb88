"""HAProxy as the router (`traffic.router = "haproxy"`): a switch is two `set server` lines
on the admin socket, no reload.

bluegreen owns one file per app (`haproxy.target`, rendered from
nginx_templates/haproxy.cfg.j2): a frontend on `haproxy.listen` and a backend with one
server per slot per app host. haproxy loads it after the main config (`-f haproxy.cfg -f
<its directory>`), whose global section has the admin socket at `level admin`; haproxy
runs master-worker (-W / -Ws), so a reload keeps the listeners and a rejected config keeps
the old worker.

What one switch sends to a traffic host, in ONE remote command when there is one traffic
host (two otherwise: `haproxy -c` everywhere first, then the switch everywhere):
    haproxy -c over the main config plus the re-rendered file
    show servers state      (what to put back if anything fails later)
    set server <new slot> ready; set server <old slot> drain; show servers state
    the last answer written to the server-state file, so a reload or restart comes up on
    the slot just switched to
Only a change of the file's shape (hosts, ports, listen, template) reloads; a reload is
followed by the same `set server` lines, because haproxy applies a `drain` left in the
state file on top of the new config and would then route to nothing (measured on 2.6).

Draining (before a slot is stopped): one remote loop polls `show stat` until the slot's
servers have no session and no queued request (twice 50 ms apart), or the drain timeout;
then the slot goes to `maint` (after `shutdown sessions`, for what the timeout left: long
WebSockets), and the state is saved again.

Canary and preview (issue 10) go through the same change script, no reload either:
- a canary of W % leaves the live slot `ready` and puts the other slot in `drain` with
  weight 100 + W (api.route_commands). No balanced request reaches a drained server, but
  the template's `use-server` rules do, for users whose cohort cookie hashes (CRC-32 mod
  100, as the lua router) below W. The weight and the drain are in the state dump, so a
  reload or restart keeps the share; the rendered file carries it too (marker and weight).
- a preview adds the token's sha1 to a map (`add map`, and the map file, mode 600) and
  puts the ready slot in `drain` (from `maint` haproxy goes straight to drain: the drain
  bit is set before the maint bit is cleared, so no balanced request gets in between).
`set server ... weight` takes 0-256; a plain switch sets every weight back to 1.

Each script sits next to the code that reads its output; every value in it is quoted.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bluegreen.config import Config, other_slot
from bluegreen.errors import BluegreenError
from bluegreen.hosts import DryRunHost, Host, Result
from bluegreen.render import front_door, parse_marker, upstream_address
from bluegreen.routers import haproxy_api as api
from bluegreen.routers.base import (
    Applied,
    ConfigRejected,
    FrontDoor,
    Routed,
    Router,
    SlotCounters,
    Unsupported,
    cohort_in,
)
from bluegreen.routers.haproxy_render import TEMPLATE, HaproxySite, preview_map_for
from bluegreen.routers.haproxy_render import render as render_haproxy

q = shlex.quote
TEST_REJECTED = 10  # exit code of a combined test-and-switch whose `haproxy -c` failed
NOT_SAVED = 5  # the switch happened but the server-state file could not be written
UNREACHABLE = 11  # nothing answers on the admin socket: nothing was sent
MARK = "--- bluegreen:"  # section lines in the output of a change script
CLI_TIMEOUT = 10.0  # one CLI exchange on the traffic host's loopback


# ---------------------------------------------------------------- config -> haproxy values


def bind_address(listen: str) -> str:
    """haproxy's `bind` form of the config's listen value: "80" -> ":80", "[::1]:80" ->
    "ipv6@::1:80" (haproxy takes no brackets), anything else as written."""
    addr, sep, port = listen.rpartition(":")
    if not sep:
        return f":{listen}"
    if addr.startswith("["):
        return f"ipv6@{addr.strip('[]')}:{port}"
    return ":" + port if addr == "*" else listen


def site_of(cfg: Config) -> HaproxySite:
    """What the template needs, from config."""
    h = cfg.haproxy
    return HaproxySite(
        app=cfg.app,
        app_hosts=[(spec.label, upstream_address(spec)) for spec in cfg.hosts.app],
        ports={"blue": cfg.slots.blue, "green": cfg.slots.green},
        listen=bind_address(h.listen),
        admin_socket=h.admin_socket,
        state_file=cfg.haproxy_state_file,
        health_path=cfg.health.path,
        health_host=cfg.health.host_header or "localhost",
        health_status=cfg.health.status,
        check_interval=h.check_interval,
        standalone=False,  # the main config has global, defaults and the admin socket
        cohort_cookie=cfg.canary.cookie,
        preview_header=cfg.preview.header,
        preview_cookie=cfg.preview.cookie,
        # a preview route only where one is configured: its map file must exist
        preview_map=(preview_map_for(cfg.haproxy_state_file, cfg.app)
                     if cfg.preview.token_env else ""),
    )


def config_files(cfg: Config) -> list[str]:
    """What `haproxy -c` reads: the main config, then ours (unless the main config is a
    directory that already holds ours: haproxy would load it twice)."""
    main, target = cfg.haproxy.main_config, cfg.haproxy_target
    if target.startswith(main.rstrip("/") + "/"):
        return [main]
    return [main, target]


# ---------------------------------------------------------------- the shell


@dataclass(frozen=True)
class Scripts:
    """The shell scripts the driver sends, built from config: pure, so unit tests can
    read them and integration tests run them."""

    admin_socket: str
    transport: str
    backend: str
    servers: tuple[api.Server, ...]
    state_file: str
    pid_file: str
    reload_command: str
    reload_timeout: float
    test_command: str

    @classmethod
    def of(cls, cfg: Config) -> Scripts:
        h = cfg.haproxy
        site = site_of(cfg)
        return cls(admin_socket=h.admin_socket, transport=h.transport,
                   backend=api.backend_name(cfg.app),
                   servers=tuple(api.servers_for(site.app_hosts, site.ports)),
                   state_file=cfg.haproxy_state_file, pid_file=h.pid_file,
                   reload_command=h.reload_command, reload_timeout=h.reload_timeout,
                   test_command=api.config_test_command(h.command, config_files(cfg)))

    def cli(self, commands: Sequence[str]) -> str:
        return api.cli_script(self.admin_socket, commands, timeout=CLI_TIMEOUT,
                              transport=self.transport)

    @property
    def show_state(self) -> str:
        return api.show_servers_state_command(self.backend)

    def test(self) -> str:
        """`haproxy -c`; its words only when it refuses (exit TEST_REJECTED)."""
        return (f"bg_out=$({self.test_command}) || {{ printf '%s\\n' \"$bg_out\"; "
                f"exit {TEST_REJECTED}; }}")

    def _reload(self, *, backend_may_be_new: bool) -> str:
        return api.reload_script(self.admin_socket, self.backend, self.state_file,
                                 self.pid_file, timeout=self.reload_timeout,
                                 reload_command=self.reload_command, transport=self.transport,
                                 backend_may_be_new=backend_may_be_new)

    def change(self, commands: Sequence[str], *, reload: str, before: bool) -> str:
        """Send `commands` (set server ...) and save the state they leave, in one CLI line
        when nothing needs a reload: [show servers state;] commands; show servers state.

        `reload`: "never"; "always" (the file's shape changed); or "if-missing" (the file
        has the shape haproxy runs, unless haproxy does not know one of our servers: a
        config never loaded, or changed by hand). The commands go to the running worker
        first in every case (whatever it knows of them): a reload dumps the state file
        before it signals, and the new worker must find the switched state there. After
        the reload they are sent again, because haproxy applies a `drain` from the state
        file on top of the new config.
        `before`: the line starts with a dump of the servers' state, to put back on failure.

        Output: `--- bluegreen: first` (the answers of that line); after a reload
        `--- bluegreen: reload` ("reloaded: worker A -> B") and `--- bluegreen: again`
        (the answers of commands + dump). Exit: UNREACHABLE when nothing answers the first
        line with `before` (nothing was sent), else the CLI's code; the reload's (6, 8: see
        haproxy_api.reload_script); NOT_SAVED when the state file could not be written.
        """
        if reload not in ("never", "always", "if-missing"):
            raise ValueError(f"reload={reload!r}")
        first = [self.show_state] * before + [*commands, self.show_state]
        failed = UNREACHABLE if before else "$bg_rc"
        parts = ['bg_tmp=$(mktemp) || exit 1; trap \'rm -f "$bg_tmp"\' EXIT',
                 f"echo {q(MARK + ' first')}; "
                 f"{{ {self.cli(first)} ; }} > \"$bg_tmp\" 2>&1 "
                 f'|| {{ bg_rc=$?; cat "$bg_tmp"; exit {failed}; }}; cat "$bg_tmp"']
        if reload != "never":
            names = " ".join(s.name for s in self.servers)
            need = "1" if reload == "always" else (
                # every server we render must be one the running haproxy has
                f"$(awk -v b={q(self.backend)} -v names={q(names)} "
                "'BEGIN { k = split(names, want, \" \") } $2 == b { have[$4] = 1 } "
                "END { for (i = 1; i <= k; i++) if (!(want[i] in have)) { print 1; exit } "
                "print 0 }' \"$bg_tmp\")")
            parts.append(
                f"bg_need={need}; if [ \"$bg_need\" = 1 ]; then "
                f"echo {q(MARK + ' reload')}; "
                f"( {self._reload(backend_may_be_new=True)} ) || exit $?; "
                f"echo {q(MARK + ' again')}; "
                f"{{ {self.cli([*commands, self.show_state])} ; }} > \"$bg_tmp\" 2>&1 "
                '|| { bg_rc=$?; cat "$bg_tmp"; exit $bg_rc; }; cat "$bg_tmp"; fi')
        state_tmp = f"{self.state_file}.bluegreen.tmp"
        parts.append(
            # the last answer is the state dump: it starts with haproxy's format line "1"
            "awk '{ l[NR] = $0 } $0 == \"1\" { s = NR } "
            "END { if (s) for (i = s; i <= NR; i++) if (l[i] != \"\") print l[i] }' "
            f"\"$bg_tmp\" > {q(state_tmp)} || exit {NOT_SAVED}; "
            f"if [ \"$(head -n 1 {q(state_tmp)})\" = 1 ]; then mv -f {q(state_tmp)} "
            f"{q(self.state_file)} || exit {NOT_SAVED}; else rm -f {q(state_tmp)}; "
            f"echo {q('haproxy did not dump the state of backend ' + self.backend)} >&2; "
            f"exit {NOT_SAVED}; fi")
        return "; ".join(parts)

    def reload_only(self) -> str:
        """After our file was removed (an undone first deploy): reload so haproxy drops the
        backend. Nothing running means nothing to undo."""
        return (f"if [ -z \"$( {{ {self.cli([api.SHOW_INFO])} ; }} 2>/dev/null )\" ]; then "
                "echo 'haproxy is not running: nothing to reload'; exit 0; fi; "
                f"{self._reload(backend_may_be_new=True)}")

    def drain(self, slot: str, timeout: float) -> str:
        """Wait until `slot`'s servers have nothing in flight (two zero polls 50 ms apart)
        and no worker from before a reload is left, or `timeout`; then retire the slot
        (maint; `shutdown sessions` first when something was left) and save the state.

        Prints `left N` (requests in flight at the end, plus one per old worker still
        serving) and the retire commands' answers; exit 7 when show stat cannot be read.
        """
        loops = max(1, int(timeout / api.POLL))
        show = self.cli([api.show_stat_command(self.backend)])
        count = (f"awk -F, -v b={q(self.backend)} -v s={q('-' + slot)} "
                 "'NR == 1 && $1 != \"# pxname\" { bad = 1 } "
                 "$1 == b && substr($2, length($2) - length(s) + 1) == s { n += $3 + $5 } "
                 "END { if (bad || NR == 0) print \"?\"; else print n + 0 }'")
        # a reload's old worker keeps serving what it started, and its sessions are not in
        # the new worker's show stat: wait for it to leave too (the master's other haproxy
        # children; a missing pid file means we cannot tell, so we do not wait)
        old_workers = (
            f"bg_m=$(head -n 1 {q(self.pid_file)} 2>/dev/null); "
            f"bg_cur=$( {{ {self.cli([api.SHOW_INFO])} ; }} 2>/dev/null "
            "| sed -n 's/^Pid: *//p'); "
            'bg_old=0; if [ -n "$bg_m" ] && [ -n "$bg_cur" ] && [ -d "/proc/$bg_m" ]; then '
            "bg_old=$(cat /proc/[0-9]*/stat 2>/dev/null | awk -v m=\"$bg_m\" -v c=\"$bg_cur\" "
            "'{ pid = $1; sub(/^.*\\) /, \"\") } $2 == m && pid != c && $1 != \"Z\" "
            "{ n++ } END { print n + 0 }'); fi")
        wait = (
            "bg_i=0; bg_zeros=0; bg_old=0; while :; do "
            f"bg_left=$( {{ {show} ; }} 2>/dev/null | {count} ); "
            'if [ "$bg_left" = "?" ] || [ -z "$bg_left" ]; then '
            f"echo {q('cannot read show stat of backend ' + self.backend)} >&2; exit 7; fi; "
            # old workers matter only once the current one has nothing left (and asking
            # costs two more processes per poll)
            'if [ "$bg_left" = 0 ]; then ' + old_workers + "; fi; "
            'if [ "$bg_left" = 0 ] && [ "$bg_old" = 0 ]; then bg_zeros=$((bg_zeros+1)); '
            "else bg_zeros=0; fi; "
            '[ "$bg_zeros" -ge 2 ] && break; '
            f'[ "$bg_i" -ge {loops} ] && break; '
            f"sleep {api.POLL}; bg_i=$((bg_i+1)); done; "
            'echo "left $((bg_left + bg_old))"')
        live = other_slot(slot)
        keep = api.retire_commands(self.backend, self.servers, live, close_sessions=False)
        cut = api.retire_commands(self.backend, self.servers, live, close_sessions=True)
        retire = (f'if [ "$((bg_left + bg_old))" = 0 ]; then '
                  f"{self.change(keep, reload='never', before=False)}; "
                  f"else {self.change(cut, reload='never', before=False)}; fi")
        return wait + "; " + retire


def sections(output: str) -> dict[str, str]:
    """The `--- bluegreen: NAME` sections of a change script's output."""
    found: dict[str, str] = {}
    name = ""
    for line in output.splitlines(keepends=True):
        if line.startswith(MARK):
            name = line[len(MARK):].strip()
            found[name] = ""
        elif name:
            found[name] += line
    return found


@dataclass(frozen=True)
class Change:
    """What a change script's output says."""

    before: list[api.ServerState] | None  # None: not asked, or haproxy lacked the backend
    reloaded: bool
    after: list[api.ServerState]


def read_change(output: str, commands: Sequence[str], backend: str, *, before: bool) -> Change:
    """Read a change script's output; raise on the first command haproxy refused in the
    line that counts (after a reload, the second one: the first may legitimately name
    servers the old config lacks)."""
    found = sections(output)
    first = api.split_answers(found.get("first", ""), before + len(commands) + 1)
    states = None
    if before:
        try:
            states = api.parse_servers_state(first[0], backend)
        except api.HaproxyError:
            states = None  # the backend is new to this haproxy: nothing to put back
    if "again" in found:
        answers = api.split_answers(found["again"], len(commands) + 1)
    else:
        answers = first[int(before):]
    refused = [(c, a) for c, a in zip(commands, answers, strict=False) if a.strip()]
    if refused:
        command, answer = refused[0]
        raise api.HaproxyError(
            f"haproxy refused `{command}`: {answer.strip().splitlines()[0]}"
            + (f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""),
            hint="compare `show servers state` with the rendered file: was haproxy "
                 "reloaded with another config?")
    return Change(states, "reloaded:" in found.get("reload", ""),
                  api.parse_servers_state(answers[-1], backend))


def restore_commands(backend: str, before: Mapping[str, str],
                     weights: Mapping[str, int] | None = None) -> list[str]:
    """Each server back to the admin state (and weight: a canary's share) it had, the
    ready ones first: at no moment is no server ready. Weights after the states: a share
    comes back only once its slot is out of the balanced pool again."""
    order = {"ready": 0, "drain": 1, "maint": 2}
    return ([api.set_state_command(backend, name, state)
             for name, state in sorted(before.items(), key=lambda kv: order[kv[1]])]
            + [api.set_weight_command(backend, name, w)
               for name, w in sorted((weights or {}).items()) if name in before])


def describe(view: api.Routed, share: int = 0) -> str:
    """`fab status` words for what haproxy routes to."""
    parts = []
    for slot in api.SLOTS:
        if view.ready[slot]:
            parts.append(f"{slot} ready ({view.up[slot]} of {view.ready[slot]} up)")
        elif view.draining[slot] and share and view.slot in api.SLOTS:
            parts.append(f"{slot} drain with a canary share of {share}% of users")
        elif view.draining[slot]:
            parts.append(f"{slot} draining")
    return "haproxy's server states: " + (", ".join(parts) or "no server ready")


# ---------------------------------------------------------------- the driver


@dataclass
class HaproxyApplied(Applied):
    """What a switch changed on one haproxy, so exactly that can be undone."""

    text: str = ""  # the file installed: its marker says the slot and the shape
    before: dict[str, str] | None = None  # server -> ready/drain/maint before the switch
    weights: dict[str, int] | None = None  # server -> weight before (a canary's share)


class HaproxyRouter(Router):
    kind = "haproxy"
    product = "haproxy"
    # canary and preview through the admin socket (no reload); no maintenance page yet
    features = frozenset({"counters", "weights", "preview"})
    # one traffic host: `haproxy -c` and the switch go in one remote command
    tests_and_applies_at_once = True

    def __init__(self, cfg: Config, host: Host) -> None:
        super().__init__(cfg, host)
        self.scripts = Scripts.of(cfg)

    @property
    def target(self) -> str:
        return self.cfg.haproxy_target

    @property
    def backend(self) -> str:
        return self.scripts.backend

    def render(self, slot: str, release: str, version: str, generation: int,
               weight: int = 0) -> str:
        """The file with `slot` live (and a canary's `weight` for the other slot); a
        template or value error is a render error, before any host is touched."""
        del version, generation  # haproxy keeps the live slot in its own state, no generation
        template = (self.cfg.resolve(self.cfg.haproxy.template) if self.cfg.haproxy.template
                    else TEMPLATE)
        try:
            return render_haproxy(site_of(self.cfg), slot, release, template, weight)
        except ValueError as exc:
            raise BluegreenError(f"cannot render {template}: {exc}", phase="render",
                                 hint="fix the value in bluegreen.toml; traffic was not "
                                      "touched") from exc

    def error_log_size(self) -> int:
        return 0  # haproxy logs through syslog; its CLI answers say what failed

    @property
    def preview_map(self) -> str:
        """"" when no preview is configured (preview.token_env empty)."""
        return site_of(self.cfg).preview_map

    def install(self, text: str) -> HaproxyApplied:
        previous = self.host.read(self.target)
        # the state file's directory must exist before the first dump
        self.host.makedirs(self.cfg.haproxy_state_file.rpartition("/")[0] or "/")
        # the file names the preview map: haproxy refuses a config whose map is missing.
        # Mode 600 (it may hold the preview token's sha1); haproxy reads it as root.
        if self.preview_map and not self.host.exists(self.preview_map):
            self.host.write_atomic(self.preview_map, "", mode=0o600)
        self.host.write_atomic(self.target, text)
        marker = parse_marker(text)
        return HaproxyApplied(previous, text=text, weight=marker.weight if marker else 0)

    # ---------------------------------------------------------------- the change
    def _run(self, script: str, says: str, timeout: float) -> Result:
        return self.host.run(script, timeout=timeout, check=False, says=says)

    def _failure(self, result: Result, what: str) -> BluegreenError:
        said = [ln for ln in (result.stderr or result.stdout).strip().splitlines() if ln.strip()]
        detail = said[-1] if said else f"exit {result.rc}"
        hints = {6: "is haproxy running in master-worker mode (-W/-Ws) with haproxy.pid_file "
                    "as its pid file, and the admin socket in its global section?",
                 8: "haproxy kept its old config: run `haproxy -c` on the traffic host and "
                    "read haproxy's log",
                 69: "install socat or python3 on the traffic host",
                 NOT_SAVED: f"check that {self.cfg.haproxy_state_file} is writable"}
        return BluegreenError(f"{what}: {detail}", host=self.label, phase="switch",
                              hint=hints.get(result.rc, "check haproxy.admin_socket "
                                             "(`stats socket ... level admin`) and haproxy's log"))

    @property
    def _change_timeout(self) -> float:
        return self.cfg.haproxy.reload_timeout + 4 * CLI_TIMEOUT + 30

    def _as_haproxy(self, applied: Applied) -> HaproxyApplied:
        if isinstance(applied, HaproxyApplied):
            return applied
        return HaproxyApplied(applied.previous, text=self.installed() or "",
                              weight=applied.weight)

    def _route_commands(self, slot: str, weight: int) -> list[str]:
        return api.route_commands(self.backend, self.scripts.servers, slot, weight)

    def _switch_script(self, applied: HaproxyApplied, slot: str, shape: str) -> tuple[str, str]:
        """(script, words) for making `slot` live. Flags what it may change before it runs:
        a lost reply may still have applied it."""
        before = parse_marker(applied.previous)
        reload = "if-missing" if before is not None and before.shape == shape else "always"
        applied.flipped = True
        applied.reloaded = applied.reloaded or reload == "always"
        commands = self._route_commands(slot, applied.weight)
        share = f" ({applied.weight}% of users to the other slot)" if applied.weight else ""
        words = (f"switch haproxy to {slot}{share}: set server ... state ready/drain and "
                 "weight on the admin socket, save the server state"
                 + (" (after a reload: the file's shape changed)" if reload == "always" else ""))
        return self.scripts.change(commands, reload=reload, before=True), words

    def _read_switch(self, applied: HaproxyApplied, result: Result, slot: str) -> None:
        """What the switch script did: the state to put back, whether it reloaded, and
        that haproxy now routes to `slot`; raise otherwise."""
        if isinstance(self.host, DryRunHost):
            return  # planned, not run: nothing to read
        found = sections(result.stdout)
        if "reload" in found:
            applied.reloaded = True  # attempted: undo reloads too, whatever came of it
        if result.rc == UNREACHABLE:
            applied.flipped = applied.reloaded = False  # nothing was sent
            said = found.get("first", "").strip().splitlines()
            raise BluegreenError(
                f"haproxy does not answer on the admin socket {self.cfg.haproxy.admin_socket}"
                + (f": {said[-1]}" if said else ""), host=self.label, phase="switch",
                hint="start haproxy (master-worker: -W or -Ws) with the main config "
                     f"{self.cfg.haproxy.main_config}, whose global section has `stats socket "
                     f"{self.cfg.haproxy.admin_socket} level admin`, loading "
                     f"{self.target} too (-f on its directory)")
        if not result.ok:
            raise self._failure(result, f"haproxy did not switch to {slot}")
        commands = self._route_commands(slot, applied.weight)
        try:
            change = read_change(result.stdout, commands, self.backend, before=True)
        except api.HaproxyError as exc:
            raise BluegreenError(exc.what, host=self.label, phase="switch",
                                 hint=exc.hint) from exc
        if change.before is not None:
            applied.before = {st.server: st.admin for st in change.before}
            applied.weights = {st.server: st.user_weight for st in change.before}
        after = api.routed(change.after)
        if after.slot != slot:
            raise BluegreenError(f"after the switch haproxy routes to {after.slot or 'nothing'}"
                                 f", not {slot} ({describe(after)})", host=self.label,
                                 phase="switch", hint="check the servers' names in "
                                 f"{self.target} against `show servers state`")
        share = api.share_of(change.after, slot)
        if share != applied.weight:
            raise BluegreenError(f"after the change haproxy gives the canary {share}% of "
                                 f"users, not {applied.weight}%", host=self.label,
                                 phase="switch", hint="`show servers state` on the admin "
                                 "socket shows the weights; `fab switch --abort` ends a canary")

    def test(self, applied: Applied, *, and_apply: bool = False) -> None:
        """`haproxy -c` over the main config and ours; with `and_apply`, the switch in the
        same remote command."""
        hap = self._as_haproxy(applied)
        script, says = self.scripts.test(), "test the new config with haproxy -c"
        marker = parse_marker(hap.text)
        if and_apply and marker is not None:
            switch, words = self._switch_script(hap, marker.slot, marker.shape)
            script, says = f"{script}; {switch}", f"haproxy -c, then {words}"
        try:
            result = self._run(script, says, self._change_timeout)
            if result.rc == TEST_REJECTED:
                hap.flipped = hap.reloaded = False  # refused before anything was sent
                self.restore(Applied(applied.previous))
                alerts = (api.parse_config_test(result.stdout)
                          or result.stdout.strip().splitlines())
                raise ConfigRejected(
                    "haproxy -c rejected the rendered config:\n    "
                    + "\n    ".join(alerts[-6:]), host=self.label, phase="switch",
                    hint=f"the previous {self.target} is back and haproxy was not touched; "
                         f"fix {self.cfg.haproxy.template or 'the template'} (or the main "
                         f"config {self.cfg.haproxy.main_config}) and re-run")
            if and_apply and marker is not None:
                self._read_switch(hap, result, marker.slot)
            elif not result.ok:
                raise self._failure(result, "haproxy -c did not run")
        finally:
            applied.flipped, applied.reloaded = hap.flipped, hap.reloaded

    def apply(self, applied: Applied, slot: str, shape: str) -> None:
        hap = self._as_haproxy(applied)
        script, says = self._switch_script(hap, slot, shape)
        applied.flipped, applied.reloaded = hap.flipped, hap.reloaded
        try:
            self._read_switch(hap, self._run(script, says, self._change_timeout), slot)
        finally:
            applied.flipped, applied.reloaded = hap.flipped, hap.reloaded

    def verify(self, applied: Applied, slot: str) -> float:
        """The front door answers from `slot` with the healthy status (X-Bluegreen-Slot is
        the name of the server that answered, whose last field is its slot). With a
        canary, both sides: `slot` to a cohort outside the share, the canary to one inside
        it (the cohorts the lua router would put there too: the same hash)."""
        if not applied.weight:
            return self.wait_front_door(slot)
        took = 0.0
        try:
            for side, cohort in ((slot, cohort_in(applied.weight, canary=False)),
                                 (other_slot(slot), cohort_in(applied.weight, canary=True))):
                self.probe_headers = {"Cookie": f"{self.cfg.canary.cookie}={cohort}"}
                took += self.wait_front_door(side)
        finally:
            self.probe_headers = None
        return took

    verify_hint = ("the template must keep the X-Bluegreen-Slot header; `fab status` shows "
                   "what haproxy routes to")

    @property
    def verify_timeout(self) -> float:
        return self.cfg.haproxy.verify_timeout

    def door(self) -> FrontDoor:
        addr, port = front_door(self.cfg.haproxy.listen)
        return FrontDoor(addr, port, self.cfg.health.host_header or "localhost")

    def restore(self, applied: Applied) -> None:
        """The previous file back, and the servers back in the admin states they had (the
        previous file's slot live when those are not known: a recovery after a crash)."""
        if applied.previous is None:
            self.host.remove(self.target)
        else:
            self.host.write_atomic(self.target, applied.previous)
        if not (applied.reloaded or applied.flipped):
            return
        before = parse_marker(applied.previous)
        if before is None:  # there was no bluegreen backend: drop ours again
            if applied.reloaded:
                result = self._run(self.scripts.reload_only(),
                                   "reload haproxy without bluegreen's file", self._change_timeout)
                if not result.ok:
                    raise self._failure(result, "haproxy reload without bluegreen's file failed")
            return
        previous = applied.previous or ""
        # only servers the previous file has: a reload brings back exactly those
        known = {name: state for name, state in (getattr(applied, "before", None) or {}).items()
                 if f"server {name} " in previous}
        if known:
            # exactly what haproxy did a moment ago, even where it differed from the file
            # (moved by hand): an undo must not move traffic somewhere it was not
            commands = restore_commands(self.backend, known, getattr(applied, "weights", None))
        else:  # not known (a recovery after a crash): the previous file's slot and share
            commands = self._route_commands(before.slot, before.weight)
        script = self.scripts.change(commands, reload="always" if applied.reloaded else "never",
                                     before=False)
        result = self._run(script, f"put haproxy back on {before.slot}"
                           + (" (reload with the previous file)" if applied.reloaded else ""),
                           self._change_timeout)
        if isinstance(self.host, DryRunHost):
            return
        if not result.ok:
            raise self._failure(result, f"haproxy could not be put back on {before.slot}")
        try:
            read_change(result.stdout, commands, self.backend, before=False)
        except api.HaproxyError as exc:
            raise BluegreenError(exc.what, host=self.label, phase="switch",
                                 hint=exc.hint) from exc

    # ---------------------------------------------------------------- what it sees
    def _ask(self, commands: Sequence[str], what: str) -> str:
        result = self.host.run(self.scripts.cli(commands), timeout=CLI_TIMEOUT + 10,
                               check=False, mutates=False, says=what)
        if not result.ok:
            detail = (result.stderr or result.stdout).strip().splitlines()
            # no phase: status, the consistency check and recovery all ask
            raise BluegreenError(
                f"haproxy on {self.label} did not answer on {self.cfg.haproxy.admin_socket}: "
                + (detail[-1] if detail else f"exit {result.rc}"), host=self.label,
                hint="is haproxy running, with `stats socket ... level admin` there? "
                     "(`fab status` says what it can see)")
        return result.stdout

    def routed(self) -> Routed:
        """What haproxy itself routes new requests to (its servers' admin states and a
        canary's weights, the preview map), beside what the installed file says."""
        marker = parse_marker(self.installed())
        if marker is None:
            return Routed("", "", "no bluegreen config installed")
        asks = [self.scripts.show_state]
        if self.preview_map:
            asks.append(api.show_map_command(self.preview_map))
        text = self._ask(asks, "ask haproxy which servers are ready")
        if text.startswith("Can't find backend"):
            return Routed("", marker.slot, f"haproxy has not loaded backend {self.backend} "
                                           f"from {self.target}", 0, marker.weight)
        state_text, map_text = (api.split_answers(text, 2) if self.preview_map
                                else (text, ""))
        states = api.parse_servers_state(state_text, self.backend)
        view = api.routed(states)
        share = api.share_of(states, view.slot) if view.slot in api.SLOTS else 0
        # a map haproxy does not know yet (a file from before previews): no preview route
        previewed = set(api.parse_show_map(map_text).values()) & set(api.SLOTS)
        preview = previewed.pop() if len(previewed) == 1 else ""
        if preview and not any(st.slot == preview and st.admin != "maint" for st in states):
            preview = ""  # the route is there, but haproxy cannot reach that slot
        return Routed(view.slot, marker.slot, describe(view, share), share, marker.weight,
                      preview=preview)

    def _stats(self) -> list[api.ServerStat]:
        text = self._ask([api.show_stat_command(self.backend)], "read haproxy's counters")
        return api.parse_show_stat(text, self.backend)

    def inflight(self, port: int) -> int | None:
        """Sessions and queued requests on the slot's servers; None when haproxy has no
        bluegreen backend yet (the caller drains by connections on the app hosts)."""
        slot = {self.cfg.slots.blue: "blue", self.cfg.slots.green: "green"}.get(port)
        if slot is None or parse_marker(self.installed()) is None:
            return None
        try:
            return api.inflight_by_slot(self._stats())[slot]
        except BluegreenError:  # unreachable, or an answer we cannot read
            return None

    def wait_drained(self, port: int, timeout: float) -> int:
        """One remote loop (not a round trip per poll), then the slot is retired."""
        slot = "blue" if port == self.cfg.slots.blue else "green"
        result = self.host.run(self.scripts.drain(slot, timeout), check=False,
                               timeout=timeout + 4 * CLI_TIMEOUT + 30,
                               says=f"wait until haproxy has nothing in flight to {slot}, "
                                    "then put its servers in maint")
        if isinstance(self.host, DryRunHost):
            return 0
        if not result.ok:
            raise self._failure(result, f"haproxy drain of slot {slot} failed")
        left = next((int(ln.split()[1]) for ln in result.stdout.splitlines()
                     if ln.startswith("left ") and ln.split()[1].isdigit()), 0)
        return left

    def counters(self) -> dict[str, SlotCounters] | None:
        """Per-slot counters from `show stat`. They count since the worker started: after a
        reload they start again from 0, so a reader must take a drop for a reset."""
        return {slot: SlotCounters(requests=c.requests, responses=dict(c.responses),
                                   upstream_errors=c.conn_errors + c.resp_errors)
                for slot, c in api.slot_counters(self._stats()).items()}

    def _send(self, commands: Sequence[str], says: str, *, phase: str = "switch") -> None:
        """Commands on the admin socket, then the state saved (no reload, no file): for a
        change whose file follows through a traffic change, or that has no file."""
        result = self._run(self.scripts.change(commands, reload="never", before=False), says,
                           self._change_timeout)
        if isinstance(self.host, DryRunHost):
            return
        if not result.ok:
            raise self._failure(result, f"haproxy did not take: {says}")
        try:
            read_change(result.stdout, commands, self.backend, before=False)
        except api.HaproxyError as exc:
            raise BluegreenError(exc.what, host=self.label, phase=phase,
                                 hint=exc.hint) from exc

    def route_now(self, slot: str) -> bool:
        """A breach: every new request to `slot` (no canary) in one admin-socket line,
        before the file and its `haproxy -c` follow in the revert's traffic change."""
        self._send(self._route_commands(slot, 0), f"every new request to {slot} at once")
        return True

    # ---------------------------------------------------------------- preview
    def set_preview(self, slot: str | None, digest: str = "") -> None:
        """Requests carrying the token whose sha1 is `digest` reach `slot` (None: no
        preview route). The map gets the digest at runtime and in its file (mode 600: a
        reload or restart keeps the route); the slot's servers leave `maint` for `drain`,
        where only such requests (and health checks) reach them, never balanced traffic.
        Removing the route puts a previewed slot back in `maint` unless it serves users
        (live, or a canary's share)."""
        if not self.preview_map:
            if slot is None:
                return  # no preview configured: no route to remove
            raise Unsupported("the haproxy router has no preview route without a token",
                              host=self.label, phase="switch",
                              hint="set preview.token_env (the variable holding the token)")
        states = api.parse_servers_state(
            self._ask([self.scripts.show_state], "ask haproxy for its servers' states"),
            self.backend)
        if slot is not None:
            commands = api.preview_map_commands(self.preview_map, digest, slot)
            commands += [api.set_state_command(self.backend, st.server, "drain")
                         for st in states if st.slot == slot and st.admin == "maint"]
            self.host.write_atomic(self.preview_map, api.map_file_text(digest, slot),
                                   mode=0o600)
            self._send(commands, f"route preview requests to {slot} on haproxy")
            return
        previewed = set(api.parse_show_map(self._ask(
            [api.show_map_command(self.preview_map)], "read haproxy's preview map")).values())
        live = api.routed(states).slot
        commands = api.preview_map_commands(self.preview_map, "", "")
        commands += [api.set_state_command(self.backend, st.server, "maint") for st in states
                     if st.slot in previewed and st.slot != live and st.admin == "drain"
                     and st.user_weight <= api.SHARE_BASE]
        self.host.write_atomic(self.preview_map, "", mode=0o600)
        self._send(commands, "remove the preview route on haproxy")


__all__ = ["HaproxyApplied", "HaproxyRouter", "Scripts", "bind_address", "config_files",
           "site_of"]

