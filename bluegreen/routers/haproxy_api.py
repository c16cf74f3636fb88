"""HAProxy's runtime API as pure functions: each command beside the parser of its output.

Nothing here opens a socket or runs a process. The driver (routers/haproxy.py, next step)
sends the scripts built here through `Host.run` on the traffic host and hands the output
back to the parsers. Everything was checked against Debian 12's haproxy 2.6.12; the
recorded outputs the unit tests parse are in tests/unit/fixtures/haproxy/.

Naming (shared with nginx_templates/haproxy.cfg.j2):
- one backend per app, named after the app (`backend_name`);
- one server per slot per app host: `<host>-<port>-<slot>`, e.g. `web1-8081-blue`.
  The slot is the last `-` field, which is what the template's X-Bluegreen-Slot header
  (`srv_name,field(-1,-)`) and `slot_of` read back. The port is in the name because
  haproxy 2.6 restores a server's *port* from the server-state file over the config
  (measured: config 18083, state file 18082 -> 18082 was used), so a changed slot port
  must give the server a new name, which the state file then does not match.

Switching (no reload): the target slot's servers go `ready` and the old ones `drain` in
one CLI line, in that order, so there is never a moment with no ready server. `drain`
takes no new requests but lets the ones in flight finish; when `show stat` says the old
servers' current sessions (scur + qcur) are 0, or the drain timeout passed, they go to
`maint` (after `shutdown sessions` for what is left: long-lived WebSockets).

Transport to the admin socket (`cli_script`): a unix socket (the default, `stats socket
PATH mode 600 level admin`) is reached with socat when installed, else with python3's
socket module (socat is not installed by default on Debian; python3 almost always is);
a TCP loopback socket (`ipv4@127.0.0.1:PORT`) is reached with bash's /dev/tcp, which
needs nothing at all but gives admin rights to every local user, so it is the fallback
for hosts without socat and python3, not the default. See `cli_script`.

Measured on 2.6, for the driver (tests/integration/test_haproxy_runtime.py shows each):
- After a reload or start, read `routed_slot` and re-send the switch when it is not the
  recorded slot. The config wins over the state file on `disabled`, but a `drain` in a
  stale state file is applied on top: dumped mid-switch, then reloaded with the other
  slot live, no server takes requests (503) until the switch is re-sent.
- Dump the state (`save_state_script`) after the switch and again after the retire;
  `reload_script` dumps it right before signalling, so a reload never reads a stale one.
- `show stat` counters start at 0 in every new worker: a counter that drops was reset.
- `shutdown sessions` at the drain timeout: a request waiting for its answer gets a 502
  (POST) or is re-sent to the new slot (GET, by `retry-on empty-response`); an upgraded
  WebSocket is closed.
"""

from __future__ import annotations

import csv
import io
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from bluegreen.errors import BluegreenError

q = shlex.quote
SLOTS = ("blue", "green")
POLL = 0.05  # seconds between checks in remote wait loops
# A canary's share of users rides in its servers' weight: SHARE_BASE + percent (101..200),
# so it is saved in the server-state file with the admin state. Weight 1 (haproxy's
# default, every server outside a canary) is no share. See nginx_templates/haproxy.cfg.j2.
SHARE_BASE = 100
PLAIN_WEIGHT = 1
# HAProxy names (proxies, servers) allow letters, digits, '-', '_', '.', ':'. We also keep
# every name we put on a CLI line inside this set: the CLI splits on spaces and ';', so a
# name outside it could smuggle a second command.
_NAME_OK = re.compile(r"^[A-Za-z0-9._:-]+$")
_NAME_BAD_CHARS = re.compile(r"[^A-Za-z0-9._:-]+")

# srv_admin_state bits (haproxy include/haproxy/server-t.h, 2.6)
ADMF_FMAINT = 0x01  # forced into maintenance (CLI `state maint`, or `disabled` in config)
ADMF_IMAINT = 0x02  # inherited from a tracked server
ADMF_CMAINT = 0x04  # "the config said disabled": a record only, kept after `state ready`
ADMF_FDRAIN = 0x08
ADMF_IDRAIN = 0x10
ADMF_RMAINT = 0x20  # address resolution failed
ADMF_MAINT = ADMF_FMAINT | ADMF_IMAINT | ADMF_RMAINT  # haproxy's own mask: CMAINT excluded
ADMF_DRAIN = ADMF_FDRAIN | ADMF_IDRAIN
# srv_op_state values
OP_STOPPED, OP_STARTING, OP_RUNNING, OP_STOPPING = 0, 1, 2, 3


class HaproxyError(BluegreenError):
    """HAProxy refused a command or answered something we cannot read."""

    def __init__(self, what: str, *, hint: str = "") -> None:
        super().__init__(what, phase="switch", hint=hint)


# ---------------------------------------------------------------- names


def _check_name(kind: str, name: str) -> str:
    if not _NAME_OK.match(name):
        raise ValueError(f"haproxy {kind} name {name!r}: only letters, digits, '.', '_', "
                         "':' and '-' are allowed")
    return name


def backend_name(app: str) -> str:
    """The app's backend (bluegreen's app names are already valid haproxy names)."""
    return _check_name("backend", app)


def server_name(host_label: str, port: int, slot: str) -> str:
    """`<host>-<port>-<slot>`; characters haproxy refuses in the host label become '_'."""
    if slot not in SLOTS:
        raise ValueError(f"unknown slot {slot!r}")
    label = _NAME_BAD_CHARS.sub("_", host_label).strip("_") or "host"
    return f"{label}-{port}-{slot}"


def slot_of(server: str) -> str:
    """The slot a server name stands for ("" for a server bluegreen did not name)."""
    slot = server.rpartition("-")[2]
    return slot if slot in SLOTS else ""


@dataclass(frozen=True)
class Server:
    """One `server` line of the backend: one slot of one app host."""

    name: str
    slot: str
    address: str
    port: int

    @property
    def endpoint(self) -> str:
        # haproxy reads the last ':' as the port separator; `ipv6@` makes an IPv6 literal
        # unambiguous (brackets are not accepted on a server line).
        addr = self.address.strip("[]")
        return f"ipv6@{addr}:{self.port}" if ":" in addr else f"{addr}:{self.port}"


def servers_for(app_hosts: Sequence[tuple[str, str]], ports: Mapping[str, int]) -> list[Server]:
    """Every (label, address) app host times every slot, with unique names.

    Two labels that only differ in characters haproxy refuses would collide after
    cleaning; the later one gets `_<n>` appended to its host part.
    """
    servers: list[Server] = []
    taken: set[str] = set()
    for i, (label, address) in enumerate(app_hosts):
        for slot in SLOTS:
            name = server_name(label, ports[slot], slot)
            if name in taken:
                name = server_name(f"{label}_{i}", ports[slot], slot)
            taken.add(name)
            servers.append(Server(name, slot, address, int(ports[slot])))
    return servers


# ---------------------------------------------------------------- transport

# Reads every byte the CLI sends until it closes the connection (it does after answering
# a non-interactive line). shutdown(SHUT_WR) is what socat does at the end of its input;
# haproxy still answers. Kept on one line so it survives any quoting.
_PY_UNIX_CLIENT = (
    "import socket,sys; s=socket.socket(socket.AF_UNIX); s.settimeout(float(sys.argv[3])); "
    "s.connect(sys.argv[1]); s.sendall(sys.argv[2].encode()+b'\\n'); "
    "s.shutdown(socket.SHUT_WR); "
    "sys.stdout.buffer.write(b''.join(iter(lambda: s.recv(65536), b'')))"
)
TRANSPORTS = ("auto", "socat", "python3", "bash-tcp")


def tcp_address(admin_socket: str) -> tuple[str, int] | None:
    """(host, port) for a TCP admin socket (`ipv4@127.0.0.1:9999`, `127.0.0.1:9999`)."""
    addr = admin_socket.removeprefix("ipv4@")
    if addr.startswith("/") or admin_socket.startswith("unix@"):
        return None
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"admin socket {admin_socket!r}: expected an absolute path or "
                         "ipv4@ADDRESS:PORT")
    return host, int(port)


def cli_script(admin_socket: str, commands: Sequence[str], *, timeout: float = 10.0,
               transport: str = "auto") -> str:
    """A shell script that sends `commands` as one CLI line and prints what haproxy says.

    One line, `;`-separated: haproxy runs them in order in one session, so a switch is a
    single round trip and the gap between `ready` and `drain` is microseconds. Each
    command's answer ends with an empty line; `split_answers` cuts them apart.

    Unix socket: socat when installed, else python3 (Debian installs neither socat nor
    netcat-with-unix-sockets by default; python3 is on nearly every Debian server).
    `transport` forces one (tests use it to prove each path). TCP: bash's /dev/tcp.
    Exit 69 when no client is available, with a message saying what to install.
    """
    if transport not in TRANSPORTS:
        raise ValueError(f"transport {transport!r}: expected one of {', '.join(TRANSPORTS)}")
    line = "; ".join(commands)
    if "\n" in line:
        raise ValueError("a CLI command cannot contain a newline")
    t = f"{timeout:g}"
    tcp = tcp_address(admin_socket)
    if tcp is not None:
        if transport not in ("auto", "bash-tcp"):
            raise ValueError(f"transport {transport} needs a unix admin socket")
        host, port = tcp
        # bash closes fd 3 when the subshell ends; haproxy closes its side after answering.
        return (f"( exec 3<>/dev/tcp/{q(host)}/{port} || exit 69; "
                f"printf '%s\\n' {q(line)} >&3; timeout {t} cat <&3 )")
    path = admin_socket.removeprefix("unix@")
    socat = f"printf '%s\\n' {q(line)} | timeout {t} socat -t {t} - UNIX-CONNECT:{q(path)}"
    # The system interpreter when there is one, without site imports (-S): it starts in
    # ~20 ms, where a python3 found on PATH may be a version manager's shim (pyenv's
    # costs 100+ ms per call, and a switch makes two or three calls).
    python = (f"bg_py=python3; [ -x /usr/bin/python3 ] && bg_py=/usr/bin/python3; "
              f"timeout {t} \"$bg_py\" -S -c {q(_PY_UNIX_CLIENT)} {q(path)} {q(line)} {t}")
    if transport == "socat":
        return socat
    if transport == "python3":
        return python
    if transport == "bash-tcp":
        raise ValueError("transport bash-tcp needs a TCP admin socket (ipv4@127.0.0.1:PORT)")
    missing = (f"cannot reach the haproxy admin socket {path}: install socat "
               "(apt-get install socat) or python3 on this host")
    return (f"if command -v socat >/dev/null 2>&1; then {socat}; "
            f"elif [ -x /usr/bin/python3 ] || command -v python3 >/dev/null 2>&1; then "
            f"{python}; "
            f"else echo {q(missing)} >&2; exit 69; fi")


def split_answers(output: str, count: int) -> list[str]:
    """Cut the output of a `;`-separated line into one answer per command.

    Every answer ends with an empty line: a command that answers nothing (a successful
    `set server`) gives just "\\n", one that says something gives "text\\n\\n". Errors and
    our read commands never contain an empty line inside, so this is unambiguous.
    """
    answers: list[str] = []
    rest = output
    for _ in range(count):
        if rest.startswith("\n"):
            answers.append("")
            rest = rest[1:]
            continue
        text, sep, rest = rest.partition("\n\n")
        if not sep and not text:
            break  # haproxy stopped answering (closed early)
        answers.append(text.strip("\n"))
    if len(answers) != count:
        raise HaproxyError(f"haproxy answered {len(answers)} of {count} commands: "
                           f"{output.strip()[:300]!r}",
                           hint="is the admin socket `level admin`? see haproxy's log")
    return answers


def check_silent(commands: Sequence[str], output: str) -> None:
    """Commands that answer nothing on success (set server, set weight, shutdown sessions):
    raise naming the first one that answered something ("No such server.")."""
    answers = split_answers(output, len(commands))
    failed = [(c, a) for c, a in zip(commands, answers, strict=True) if a.strip()]
    if failed:
        command, answer = failed[0]
        raise HaproxyError(
            f"haproxy refused `{command}`: {answer.strip().splitlines()[0]}"
            + (f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""),
            hint="compare `show servers state` with the rendered config: were the server "
                 "names changed without a reload?")


# ---------------------------------------------------------------- switching


def set_state_command(backend: str, server: str, state: str) -> str:
    if state not in ("ready", "drain", "maint"):
        raise ValueError(f"server state {state!r}: expected ready, drain or maint")
    return f"set server {_check_name('backend', backend)}/{_check_name('server', server)} " \
           f"state {state}"


def switch_commands(backend: str, servers: Iterable[Server], slot: str) -> list[str]:
    """Make `slot` take every new request: its servers `ready` first, then the other
    slot's servers `drain` (in-flight requests finish, no new ones arrive)."""
    if slot not in SLOTS:
        raise ValueError(f"unknown slot {slot!r}")
    servers = list(servers)
    return ([set_state_command(backend, s.name, "ready") for s in servers if s.slot == slot]
            + [set_state_command(backend, s.name, "drain") for s in servers if s.slot != slot])


def set_weight_command(backend: str, server: str, weight: int) -> str:
    if not 0 <= weight <= 256:
        raise ValueError(f"weight {weight}: haproxy takes 0-256")
    return f"set server {_check_name('backend', backend)}/{_check_name('server', server)} " \
           f"weight {int(weight)}"


def route_commands(backend: str, servers: Iterable[Server], live: str,
                   share: int = 0) -> list[str]:
    """Every new request to `live`, except a canary's `share` percent of users (by cohort
    cookie) to the other slot; share 0 is a plain switch (switch_commands, weights back
    to plain).

    Order, so that no moment routes to nothing or to the wrong side: the live slot ready
    first; then the other slot leaves the balanced pool (drain) before its weight carries
    a share, and a share shrinks before it ends (a lower weight while still in drain);
    weights back to plain last. With a share the canary stays in `drain`: balanced traffic
    never reaches it, `use-server` (the cohort rule) does.
    """
    if not 0 <= share <= 100:
        raise ValueError(f"canary share {share}: expected 0-100")
    servers = list(servers)
    other = [s for s in servers if s.slot != live]
    commands = switch_commands(backend, servers, live)
    if share:
        commands += [set_weight_command(backend, s.name, SHARE_BASE + share) for s in other]
    else:
        commands += [set_weight_command(backend, s.name, PLAIN_WEIGHT) for s in other]
    return commands + [set_weight_command(backend, s.name, PLAIN_WEIGHT)
                       for s in servers if s.slot == live]


def share_of(states: Iterable[ServerState], live: str) -> int:
    """The canary share haproxy applies now: the other slot's servers in drain whose
    weight carries a share (the smallest, if they differ: a change cut off half-way)."""
    shares = [min(100, st.user_weight - SHARE_BASE) for st in states
              if st.slot and st.slot != live and st.admin == "drain"
              and st.user_weight > SHARE_BASE]
    return min(shares) if shares else 0


def shutdown_sessions_command(backend: str, server: str) -> str:
    """Close every session still open on a server (WebSockets at the drain timeout)."""
    return f"shutdown sessions server {_check_name('backend', backend)}/" \
           f"{_check_name('server', server)}"


def retire_commands(backend: str, servers: Iterable[Server], live_slot: str, *,
                    close_sessions: bool) -> list[str]:
    """After the drain: the slot that is not live goes to `maint` (no health checks
    against an app that is about to be stopped). `close_sessions`: the drain timed out,
    so cut what is left first; `maint` alone would leave those sessions open."""
    commands: list[str] = []
    for s in servers:
        if s.slot == live_slot:
            continue
        if close_sessions:
            commands.append(shutdown_sessions_command(backend, s.name))
        commands.append(set_state_command(backend, s.name, "maint"))
    return commands


def set_weight_commands(backend: str, servers: Iterable[Server],
                        weights: Mapping[str, int]) -> list[str]:
    """Per-slot weights (0-256) for a later canary; every server of a slot gets its
    slot's weight. Weight 0 keeps a server `UP` in `show stat` but sends it nothing."""
    commands = []
    for s in servers:
        if s.slot not in weights:
            continue
        w = int(weights[s.slot])
        if not 0 <= w <= 256:
            raise ValueError(f"weight {w} for slot {s.slot}: haproxy takes 0-256")
        commands.append(f"set server {_check_name('backend', backend)}/"
                        f"{_check_name('server', s.name)} weight {w}")
    return commands


# ---------------------------------------------------------------- show stat


def show_stat_command(backend: str) -> str:
    """Servers only (type 4), all of them (-1), of one backend."""
    return f"show stat {_check_name('backend', backend)} 4 -1"


def _int(value: str) -> int:
    return int(value) if value.strip().lstrip("-").isdigit() else 0


@dataclass(frozen=True)
class ServerStat:
    """One server row of `show stat`. Counters count since the worker started: a reload
    starts a new worker at 0, so a reader must treat a drop as a reset."""

    backend: str
    server: str
    slot: str
    status: str  # UP, UP 1/3, DOWN, DRAIN, MAINT, NOLB, "no check"
    weight: int
    scur: int  # current sessions: requests (or tunnels) in flight to this server
    qcur: int  # requests queued for it (none without maxconn)
    stot: int  # sessions since start: one per HTTP request
    econ: int  # failed connects
    eresp: int  # failed responses (server closed, read error)
    wretr: int
    wredis: int
    cli_abrt: int
    srv_abrt: int
    hrsp: dict[str, int]  # "1xx".."5xx", "other"
    qtime: int  # ms averages over the last 1024 requests
    ctime: int
    rtime: int
    ttime: int
    rtime_max: int
    ttime_max: int
    raw: dict[str, str] = field(repr=False, compare=False)

    @property
    def inflight(self) -> int:
        return self.scur + self.qcur

    @property
    def accepts_new(self) -> bool:
        """HAProxy would send it a new request now (up, not draining, weight > 0)."""
        if self.weight <= 0:
            return False
        return self.status.startswith("UP") or self.status == "no check"


def parse_show_stat(text: str, backend: str | None = None) -> list[ServerStat]:
    """Server rows of `show stat` CSV (header `# pxname,svname,...`)."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines or not lines[0].startswith("# pxname,"):
        raise HaproxyError(f"`show stat` answered {text.strip()[:200]!r}",
                           hint="check the backend name and the admin socket")
    reader = csv.DictReader(io.StringIO("\n".join([lines[0][2:], *lines[1:]])))
    stats = []
    for row in reader:
        if row["svname"] in ("FRONTEND", "BACKEND"):
            continue
        if backend is not None and row["pxname"] != backend:
            continue
        stats.append(ServerStat(
            backend=row["pxname"], server=row["svname"], slot=slot_of(row["svname"]),
            status=row["status"], weight=_int(row["weight"]),
            scur=_int(row["scur"]), qcur=_int(row["qcur"]), stot=_int(row["stot"]),
            econ=_int(row["econ"]), eresp=_int(row["eresp"]), wretr=_int(row["wretr"]),
            wredis=_int(row["wredis"]), cli_abrt=_int(row["cli_abrt"]),
            srv_abrt=_int(row["srv_abrt"]),
            hrsp={k: _int(row[f"hrsp_{k}"]) for k in ("1xx", "2xx", "3xx", "4xx", "5xx",
                                                     "other")},
            qtime=_int(row["qtime"]), ctime=_int(row["ctime"]), rtime=_int(row["rtime"]),
            ttime=_int(row["ttime"]), rtime_max=_int(row.get("rtime_max", "")),
            ttime_max=_int(row.get("ttime_max", "")),
            raw={k: v for k, v in row.items() if k},
        ))
    return stats


@dataclass(frozen=True)
class SlotCounters:
    """What the router saw for one slot, summed over its servers (one per app host)."""

    slot: str
    requests: int  # stot
    responses: dict[str, int]  # by status class
    conn_errors: int  # econ: could not connect to the app
    resp_errors: int  # eresp: the app closed or failed mid-response
    inflight: int  # scur + qcur now
    client_aborts: int
    server_aborts: int
    rtime_avg_ms: int  # request-weighted over servers; haproxy has no percentiles here
    ttime_avg_ms: int
    rtime_max_ms: int
    ttime_max_ms: int

    @property
    def errors(self) -> int:
        """Requests users saw fail because of the app: 5xx + connect + response errors."""
        return self.responses.get("5xx", 0) + self.conn_errors + self.resp_errors


def slot_counters(stats: Iterable[ServerStat]) -> dict[str, SlotCounters]:
    """Per-slot sums of `show stat` server rows (servers bluegreen did not name are left
    out). Both slots are always present."""
    by_slot: dict[str, list[ServerStat]] = {s: [] for s in SLOTS}
    for st in stats:
        if st.slot:
            by_slot[st.slot].append(st)
    out = {}
    for slot, rows in by_slot.items():
        total = sum(r.stot for r in rows)

        def weighted(attr: str, rows: list[ServerStat] = rows, total: int = total) -> int:
            if not total:
                return 0
            return round(sum(getattr(r, attr) * r.stot for r in rows) / total)

        out[slot] = SlotCounters(
            slot=slot, requests=total,
            responses={k: sum(r.hrsp[k] for r in rows)
                       for k in ("1xx", "2xx", "3xx", "4xx", "5xx", "other")},
            conn_errors=sum(r.econ for r in rows), resp_errors=sum(r.eresp for r in rows),
            inflight=sum(r.inflight for r in rows),
            client_aborts=sum(r.cli_abrt for r in rows),
            server_aborts=sum(r.srv_abrt for r in rows),
            rtime_avg_ms=weighted("rtime"), ttime_avg_ms=weighted("ttime"),
            rtime_max_ms=max((r.rtime_max for r in rows), default=0),
            ttime_max_ms=max((r.ttime_max for r in rows), default=0),
        )
    return out


def inflight_by_slot(stats: Iterable[ServerStat]) -> dict[str, int]:
    """Requests in flight (or tunnels open) per slot: the drain waits for 0 here."""
    return {slot: c.inflight for slot, c in slot_counters(stats).items()}


# ---------------------------------------------------------------- show servers state


def show_servers_state_command(backend: str) -> str:
    return f"show servers state {_check_name('backend', backend)}"


@dataclass(frozen=True)
class ServerState:
    """One row of `show servers state` (the server-state file has the same format)."""

    backend: str
    server: str
    slot: str
    address: str
    port: int
    op_state: int  # 0 stopped (DOWN), 1 starting, 2 running, 3 stopping
    admin_state: int  # ADMF_* bits
    user_weight: int
    initial_weight: int

    @property
    def admin(self) -> str:
        """ready / drain / maint, as `set server ... state` names them."""
        if self.admin_state & ADMF_MAINT:
            return "maint"
        if self.admin_state & ADMF_DRAIN:
            return "drain"
        return "ready"

    @property
    def up(self) -> bool:
        return self.op_state in (OP_RUNNING, OP_STARTING)

    @property
    def takes_new_requests(self) -> bool:
        return self.admin == "ready" and self.up and self.user_weight > 0


def parse_servers_state(text: str, backend: str | None = None) -> list[ServerState]:
    """`show servers state [backend]`: a version line ("1"), a `#` header naming the
    columns, then space-separated rows. Columns are read by name from the header."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines or lines[0].strip() != "1" or len(lines) < 2 or not lines[1].startswith("#"):
        raise HaproxyError(f"`show servers state` answered {text.strip()[:200]!r}",
                           hint="check the backend name; haproxy 1.6+ has this command")
    columns = lines[1].lstrip("#").split()
    states = []
    for line in lines[2:]:
        row = dict(zip(columns, line.split(), strict=False))
        if backend is not None and row.get("be_name") != backend:
            continue
        states.append(ServerState(
            backend=row["be_name"], server=row["srv_name"], slot=slot_of(row["srv_name"]),
            address=row["srv_addr"], port=_int(row.get("srv_port", "0")),
            op_state=_int(row["srv_op_state"]), admin_state=_int(row["srv_admin_state"]),
            user_weight=_int(row["srv_uweight"]), initial_weight=_int(row["srv_iweight"]),
        ))
    return states


@dataclass(frozen=True)
class Routed:
    """What HAProxy itself routes new requests to, from its admin states.

    `slot` is "blue"/"green" when exactly one slot has ready servers with weight > 0,
    "mixed" when both do (a canary, or a switch cut off between its two commands), and ""
    when none does (every new request would get a 503). Health is reported apart: an
    admin-ready slot whose servers are all DOWN still "is" the routed slot (that is what
    was asked of HAProxy), and `healthy` says whether it can answer.
    """

    slot: str
    ready: dict[str, int]  # slot -> servers in admin state ready with weight > 0
    up: dict[str, int]  # slot -> of those, the ones whose health check says up
    draining: dict[str, int]

    @property
    def healthy(self) -> bool:
        return self.slot in SLOTS and self.up.get(self.slot, 0) > 0


def routed(states: Iterable[ServerState]) -> Routed:
    ready = dict.fromkeys(SLOTS, 0)
    up = dict.fromkeys(SLOTS, 0)
    draining = dict.fromkeys(SLOTS, 0)
    for st in states:
        if not st.slot:
            continue
        if st.admin == "ready" and st.user_weight > 0:
            ready[st.slot] += 1
            up[st.slot] += int(st.up)
        elif st.admin == "drain":
            draining[st.slot] += 1
    live = [s for s in SLOTS if ready[s]]
    slot = live[0] if len(live) == 1 else ("mixed" if live else "")
    return Routed(slot, ready, up, draining)


def routed_slot(states: Iterable[ServerState]) -> str:
    return routed(states).slot


# ---------------------------------------------------------------- the preview map

_DIGEST = re.compile(r"^[0-9a-f]{40}$")


def preview_map_commands(map_file: str, digest: str, slot: str) -> list[str]:
    """Empty the preview map, then (with a slot) route the token whose sha1 is `digest`
    there. The map holds one entry at most: there is one ready slot to preview."""
    commands = [f"clear map {_check_path(map_file)}"]
    if slot:
        if slot not in SLOTS:
            raise ValueError(f"unknown slot {slot!r}")
        if not _DIGEST.match(digest):
            raise ValueError("the preview digest must be 40 lowercase hex digits (sha1)")
        commands.append(f"add map {_check_path(map_file)} {digest} {slot}")
    return commands


def show_map_command(map_file: str) -> str:
    return f"show map {_check_path(map_file)}"


def parse_show_map(text: str) -> dict[str, str]:
    """`show map FILE`: lines `0x55d...  key value`; key -> value."""
    entries = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0].startswith("0x"):
            entries[parts[1]] = parts[2]
    return entries


def map_file_text(digest: str, slot: str) -> str:
    """What haproxy loads at start or reload (the runtime entries are lost then)."""
    return f"{digest} {slot}\n" if slot else ""


def _check_path(path: str) -> str:
    # a CLI line splits on spaces and ';': keep the path to characters that cannot
    if not re.match(r"^/[A-Za-z0-9._/-]+$", path):
        raise ValueError(f"map file {path!r}: only an absolute path of letters, digits, "
                         "'.', '_', '-' and '/' can be named on the haproxy CLI")
    return path


# ---------------------------------------------------------------- show info


SHOW_INFO = "show info"


def parse_show_info(text: str) -> dict[str, str]:
    """`Name: value` lines; `Pid` is the worker that answered (it changes on reload)."""
    info = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            info[key.strip()] = value.strip()
    if "Pid" not in info:
        raise HaproxyError(f"`show info` answered {text.strip()[:200]!r}")
    return info


# ---------------------------------------------------------------- config test, state, reload


def config_test_command(haproxy_command: str, config_files: Sequence[str]) -> str:
    """`haproxy -c` over every file haproxy loads (the user's main config, then ours).

    `haproxy_command` is a command prefix like nginx.command ("haproxy", "sudo haproxy")
    and is not quoted; the files are. Output goes to stdout for `parse_config_test`.
    """
    files = " ".join(f"-f {q(f)}" for f in config_files)
    return f"{haproxy_command} -c {files} 2>&1"


def parse_config_test(output: str) -> list[str]:
    """The lines that explain a rejected config: [ALERT]s, minus haproxy's generic
    "Fatal errors found" summary when a specific alert is there."""
    alerts = [ln.strip() for ln in output.splitlines() if "[ALERT]" in ln]
    specific = [ln for ln in alerts if "Fatal errors found in configuration" not in ln]
    return specific or alerts


_LIB = """
bg_haproxy_pid() {  # the worker that answers on the admin socket, or nothing
  { %(show_info)s ; } 2>/dev/null | sed -n 's/^Pid: *//p'
}
"""


def _lib(admin_socket: str, timeout: float, transport: str) -> str:
    return _LIB % {"show_info": cli_script(admin_socket, [SHOW_INFO], timeout=timeout,
                                           transport=transport)}


def save_state_script(admin_socket: str, backend: str, state_file: str, *,
                      timeout: float = 10.0, transport: str = "auto") -> str:
    """Dump this backend's runtime state into its server-state file, atomically.

    The template loads that file (`load-server-state-from-file local`) when haproxy
    starts, so a reload or restart comes up on the slot the runtime API switched to. A
    dump that does not start with the format version line ("1") is haproxy's error
    message, not a state: it is printed and the old file stays. Exit 5 then.
    """
    tmp = f"{state_file}.bluegreen.tmp"
    dump = cli_script(admin_socket, [show_servers_state_command(backend)], timeout=timeout,
                      transport=transport)
    return (f"{{ {dump} ; }} > {q(tmp)} || {{ rc=$?; rm -f {q(tmp)}; exit $rc; }}; "
            f"if [ \"$(head -n 1 {q(tmp)})\" != 1 ]; then "
            f"echo \"haproxy would not dump the state of backend {backend}: "
            f"$(head -c 300 {q(tmp)})\" >&2; rm -f {q(tmp)}; exit 5; fi; "
            f"mv -f {q(tmp)} {q(state_file)}")


def reload_script(admin_socket: str, backend: str, state_file: str, pid_file: str, *,
                  timeout: float = 30.0, reload_command: str = "",
                  transport: str = "auto", backend_may_be_new: bool = False) -> str:
    """Save the state file, reload haproxy, and wait until a new worker answers.

    HAProxy must run in master-worker mode (-W; Debian's unit runs -Ws): the master
    re-reads the config on SIGUSR2, starts a new worker that loads the state file and
    takes the listening sockets over from the old one (no closed listener, unlike
    `-sf` without `expose-fd listeners`), and if the new config fails it keeps the old
    worker serving. `reload_command` replaces the signal (e.g. "systemctl reload
    haproxy"); without it the master's PID comes from `pid_file` (haproxy -p), checked
    to be a haproxy whose child answers on the admin socket, so a stale pid file never
    makes us signal a stranger.

    `backend_may_be_new`: the running haproxy may not know the backend yet (the first
    deploy loads it with this very reload), so a dump it refuses is no reason to stop;
    there is no state to keep then.

    Exit codes: 6 no running master-worker haproxy matches the pid file; 5 the state
    could not be saved (nothing was reloaded); 8 the old worker still answers at the
    deadline: the master did not apply the new config (its log says why).
    """
    pf = q(pid_file)
    lib = _lib(admin_socket, min(timeout, 10.0), transport)
    check_master = (
        f"m=$(cat {pf} 2>/dev/null | head -n 1); "
        f'if [ -z "$m" ] || [ ! -d "/proc/$m" ]; then echo "haproxy master pid file "{pf}'
        '" is missing or stale: is haproxy running in master-worker mode (-W)?" >&2; '
        "exit 6; fi; "
        # the executable, not the command line: any command line may contain "haproxy"
        'case "$(readlink "/proc/$m/exe")" in */haproxy*) ;; '
        f'*) echo "pid $m from "{pf}" is not haproxy" >&2; exit 6;; esac; '
        'pp=$(sed -n "s/^PPid:[[:space:]]*//p" /proc/$before/status 2>/dev/null); '
        'if [ "$pp" != "$m" ]; then echo "the haproxy worker $before on the admin socket is '
        'not a child of master $m: start haproxy in master-worker mode (-W) or set the '
        'right pid file" >&2; exit 6; fi; '
    )
    signal = reload_command if reload_command else "kill -USR2 \"$m\""
    return (
        lib
        + "before=$(bg_haproxy_pid); "
        + 'if [ -z "$before" ]; then echo "no haproxy answers on the admin socket "'
        + f"{q(admin_socket)} >&2; exit 6; fi; "
        + ("" if reload_command else check_master)
        + "( " + save_state_script(admin_socket, backend, state_file, timeout=min(timeout, 10.0),
                                   transport=transport) + " ) || "
        + ("[ $? = 5 ] || exit 5; " if backend_may_be_new else "exit 5; ")
        + f"{signal} || exit $?; "
        + f"i=0; while [ $i -lt {max(1, int(timeout / POLL))} ]; do "
        + 'now=$(bg_haproxy_pid); '
        + 'if [ -n "$now" ] && [ "$now" != "$before" ]; then '
        + 'echo "reloaded: worker $before -> $now"; exit 0; fi; '
        + f"sleep {POLL}; i=$((i+1)); done; "
        + 'echo "haproxy kept its old worker $before: the master did not apply the new '
        + 'config (see its log; run haproxy -c)" >&2; exit 8'
    )
