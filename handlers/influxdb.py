"""handler-kvm-influxdb: a metrics-kvm event's line protocol into InfluxDB 1.x's HTTP /write, whole.

Sensu Core's `udp` handler type sends the whole check output as one datagram: above 65,507 bytes
(about 45 domains) sendto fails ("Message too long") and every point is lost, silently. This pipe
handler reads the event on stdin and posts the lines in batches, each acknowledged by InfluxDB.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import stat
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence

from sensu_kvm.argtypes import name_arg, one_line, path_arg, seconds_arg, shown, whole_arg
from sensu_kvm.events import Event
from sensu_kvm.handler import EXIT_BAD_INPUT, EXIT_DONE, EXIT_FAILED, HandlerParser, Log, build_parser, run_handler

PROG = "handler-kvm-influxdb"
DEFAULT_URL = "http://127.0.0.1:8086"
BATCH_LINES = 5000  # InfluxDB's own advice for a batch: 5,000 to 10,000 points
MAX_BATCH_BYTES = 4 * 1024 * 1024  # far below influxd's max-body-size (25 MB by default)
MAX_EVENT_BYTES = 64 * 1024 * 1024  # metrics-kvm on 1,000 domains: about 0.7 MB (test driver) to 3 MB
ENV_USER, ENV_PASSWORD = "INFLUX_USERNAME", "INFLUX_PASSWORD"  # the names the influx shell reads

EXAMPLES = f"""\
  {PROG} --database kvm < event.json
  {PROG} --url https://influx.example.com:8086 --database kvm --retention-policy autogen
  {PROG} --credentials-file /etc/sensu/influxdb.credentials --database kvm < event.json"""

DESCRIPTION = f"""\
Writes the output of a metrics check (metrics-kvm --format influxdb: InfluxDB line protocol) from a
Sensu Core 1.x or Sensu Go event on standard input to InfluxDB 1.x's HTTP API (POST /write,
precision ns), in batches of at most --batch-lines lines and {MAX_BATCH_BYTES // 2**20} MiB, so that
nothing is lost however many domains the host has. Credentials, when InfluxDB asks for them, come
from ${ENV_USER} and ${ENV_PASSWORD} or from --credentials-file (one line USER:PASSWORD, readable
by its owner only), never from the command line, and are never shown. Says how many points were
written. Exit 0 when InfluxDB stored every point; 1 when it refused a batch or could not be
reached (the line says how many points were written before); 2 for bad options, an event that
is not JSON, a check that failed or printed nothing, or output that is not line protocol."""

_DROPPED = r"dropped=(\d+)"


class BadInput(Exception):
    """The event or the options cannot be used: one line, exit 2, nothing written."""


def lines_of(output: str) -> list[str]:
    """The line-protocol lines of a check's output; BadInput when there are none, or when a line
    is not line protocol (a measurement and a field set separated by a space)."""
    # split at newlines only: str.splitlines would also cut at U+2028 and others, which a tag may hold
    lines = [line.rstrip("\r") for line in output.split("\n") if line.strip()]
    if not lines:
        raise BadInput("the check printed nothing: no metrics to write")
    for n, line in enumerate(lines, 1):
        if line.startswith("#") or " " not in line.strip() or "=" not in line:
            raise BadInput(f"line {n} of the check's output is not InfluxDB line protocol: {shown(line)}")
    return lines


def batches(lines: Sequence[str], size: int, max_bytes: int = MAX_BATCH_BYTES) -> Iterator[list[str]]:
    """The lines in order, cut into batches of at most ``size`` lines and ``max_bytes`` bytes
    (a single longer line makes a batch of its own)."""
    batch: list[str] = []
    weight = 0
    for line in lines:
        cost = len(line.encode("utf-8", "surrogatepass")) + 1
        if batch and (len(batch) >= size or weight + cost > max_bytes):
            yield batch
            batch, weight = [], 0
        batch.append(line)
        weight += cost
    if batch:
        yield batch


def credentials(path: str | None, environ: Mapping[str, str]) -> tuple[str, str] | None:
    """(user, password) from the credentials file or the environment, None when neither has them."""
    if path is not None:
        try:
            info = os.stat(path)
            if not stat.S_ISREG(info.st_mode):
                raise BadInput(f"--credentials-file {shown(path)} is not a regular file")
            if info.st_mode & 0o077:
                raise BadInput(f"--credentials-file {shown(path)} is readable by other users (mode "
                               f"{stat.S_IMODE(info.st_mode):04o}): chmod 600 it")
            with open(path, encoding="utf-8") as handle:
                first = handle.readline().rstrip("\r\n")
        except OSError as err:
            raise BadInput(f"cannot read --credentials-file {shown(path)}: {err.strerror}") from None
        except UnicodeDecodeError:
            raise BadInput(f"--credentials-file {shown(path)} is not UTF-8 text") from None
        user, colon, password = first.partition(":")
        if not colon or not user:
            raise BadInput(f"--credentials-file {shown(path)}: its first line must be USER:PASSWORD")
        return user, password
    name, secret = environ.get(ENV_USER), environ.get(ENV_PASSWORD)
    if name:
        return name, secret or ""
    if secret:
        raise BadInput(f"${ENV_PASSWORD} is set without ${ENV_USER}")
    return None


def url_arg(text: str) -> str:
    """InfluxDB's base URL: http or https, a host, no user or password, no query."""
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"{shown(text)} is not an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise argparse.ArgumentTypeError("the URL holds a user or password: give them in $INFLUX_USERNAME and "
                                         "$INFLUX_PASSWORD or --credentials-file, never on the command line")
    if parts.query or parts.fragment:
        raise argparse.ArgumentTypeError(f"{shown(text)} has a query or fragment: give the base URL only")
    try:
        parts.port  # noqa: B018 (a port out of range raises here)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{shown(text)} has a bad port") from None
    return text.rstrip("/")


def post(url: str, body: bytes, auth: tuple[str, str] | None, timeout: float) -> tuple[int, str]:
    """POST body; (HTTP status, body of the answer). OSError when InfluxDB cannot be reached."""
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "text/plain; charset=utf-8"})
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_unredirected_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, answer.read(4096).decode(errors="replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read(4096).decode(errors="replace")


def _reason(body: str) -> str:
    """InfluxDB's {"error": "..."}, or the body as it is; one line, at most 300 characters."""
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError):
        error = None
    return one_line(str(error) if error else body.strip())[:300] or "no reason given"


def act(options: argparse.Namespace, event: Event, log: Log) -> int:
    head = f"{event.flavour} event {event.entity}/{event.check}"
    try:
        if event.status != 0:
            raise BadInput(f"the check failed (status {event.status}): its output holds no metrics")
        lines = lines_of(event.output)
        auth = credentials(options.credentials_file, os.environ)
    except BadInput as err:
        log(f"{head}: {err}; nothing written")
        return EXIT_BAD_INPUT
    query = {"db": options.database, "precision": "ns"}
    if options.retention_policy:
        query["rp"] = options.retention_policy
    url = f"{options.url}/write?{urllib.parse.urlencode(query)}"
    where = f"{options.url} database {options.database}"
    written = refused = 0
    started = time.monotonic()
    parts = list(batches(lines, options.batch_lines))
    for n, batch in enumerate(parts, 1):
        body = ("\n".join(batch) + "\n").encode("utf-8", "surrogatepass")
        try:
            status, answer = post(url, body, auth, options.timeout)
        except (OSError, ValueError) as err:
            why = getattr(err, "reason", None) or err
            log(f"{head}: cannot reach InfluxDB at {options.url}: {why}; {written} of {len(lines)} points written "
                f"before (batch {n} of {len(parts)})")
            return EXIT_FAILED
        if status == 204:
            written += len(batch)
            continue
        dropped = re.search(_DROPPED, answer)
        lost = min(len(batch), int(dropped.group(1))) if dropped and status == 400 else len(batch)
        written += len(batch) - lost
        refused += lost
        log(f"{head}: InfluxDB refused batch {n} of {len(parts)} ({len(batch)} points, {lost} not stored): "
            f"HTTP {status} {_reason(answer)}")
    took = time.monotonic() - started
    if refused:
        log(f"{head}: {written} of {len(lines)} points written to {where}; {refused} refused")
        return EXIT_FAILED
    log(f"{head}: {written} points written to {where} in {len(parts)} batch{'es' if len(parts) > 1 else ''} "
        f"({took:.2f} s)")
    return EXIT_DONE


def parser() -> HandlerParser:
    p = build_parser(PROG, DESCRIPTION, EXAMPLES, libvirt=False)
    p.add_argument("--url", type=url_arg, default=DEFAULT_URL,
                   help=f"InfluxDB's base URL, without user or password (default: {DEFAULT_URL})")
    p.add_argument("--database", type=name_arg, default="kvm", metavar="NAME", help="the database (default: kvm)")
    p.add_argument("--retention-policy", type=name_arg, metavar="NAME",
                   help="the retention policy (default: the database's default)")
    p.add_argument("--batch-lines", type=whole_arg, default=BATCH_LINES, metavar="N",
                   help=f"points per POST, a whole number >= 1 (default: {BATCH_LINES})")
    p.add_argument("--timeout", type=seconds_arg, default=10.0, metavar="SECONDS",
                   help="how long to wait for each POST, up to 86400 (default: 10)")
    p.add_argument("--credentials-file", type=path_arg, metavar="PATH",
                   help=f"a file whose first line is USER:PASSWORD, mode 0600 (default: ${ENV_USER} and "
                        f"${ENV_PASSWORD}, else no authentication)")
    return p


def main() -> None:
    run_handler(parser(), act, MAX_EVENT_BYTES)


if __name__ == "__main__":
    main()
