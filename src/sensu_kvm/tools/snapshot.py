"""kvm-snapshot: the classic virsh snapshot workflow as one safe tool, through libvirt only."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from sensu_kvm import __version__, virt
from sensu_kvm.argtypes import count_arg, domain_arg, name_arg, path_arg, shown, strict_duration_arg, text_arg
from sensu_kvm.durations import format_age
from sensu_kvm.errors import BadRequest, KvmError, NotFound
from sensu_kvm.snapshots import operations, policy, tree
from sensu_kvm.snapshots.tree import Snapshot
from sensu_kvm.tools import EXIT_FAILED, EXIT_OK, Parser, common_options, run_tool, settle
from sensu_kvm.virt import api

PROG = "kvm-snapshot"

EXIT_TEXT = ("exit codes: 0 done, 1 libvirt or the host failed or refused (one line on stderr), "
             "2 bad options or input\n(unknown domain or snapshot, name taken, raw disk): nothing changed")

EXAMPLES = {
    "": """\
  kvm-snapshot create web1 before-upgrade --description "before apt upgrade"
  kvm-snapshot create web1 --disk-only --quiesce --atomic
  kvm-snapshot list web1 --tree
  kvm-snapshot info web1 before-upgrade
  kvm-snapshot revert web1 before-upgrade --running
  kvm-snapshot delete web1 before-upgrade
  kvm-snapshot prune --all --older-than 7d --keep 3 --dry-run
  kvm-snapshot chain web1""",
    "create": """\
  kvm-snapshot create web1                         internal, named after the time (with memory if running)
  kvm-snapshot create web1 before-upgrade --description "before apt upgrade"
  kvm-snapshot create web1 nightly --disk-only     an overlay beside each image (web1.nightly)
  kvm-snapshot create web1 nightly --disk-only --diskspec vda=/srv/overlays/web1-vda.nightly
  kvm-snapshot create web1 --disk-only --quiesce --atomic   file systems frozen by the guest agent""",
    "list": """\
  kvm-snapshot list web1
  kvm-snapshot list web1 --tree
  kvm-snapshot list web1 --external --json""",
    "info": "  kvm-snapshot info web1 before-upgrade",
    "dumpxml": "  kvm-snapshot dumpxml web1 before-upgrade --security-info",
    "edit": """\
  kvm-snapshot edit web1 nightly --rename nightly-2024-05-01
  kvm-snapshot edit web1 before-upgrade --description "before apt upgrade to bookworm\"""",
    "revert": """\
  kvm-snapshot revert web1 before-upgrade
  kvm-snapshot revert web1 before-upgrade --paused""",
    "delete": """\
  kvm-snapshot delete web1 before-upgrade
  kvm-snapshot delete web1 --current""",
    "prune": """\
  kvm-snapshot prune web1 --keep 5
  kvm-snapshot prune --all --older-than 14d --keep 2 --dry-run""",
    "chain": """\
  kvm-snapshot chain web1
  kvm-snapshot chain web1 --json""",
}


def diskspec(text: str) -> tuple[str, str]:
    target, sep, path = text.partition("=")
    if not sep or not target or not path:
        raise argparse.ArgumentTypeError(f"{shown(text)} is not DISK=PATH (such as vda=/srv/overlays/web1-vda.qcow2)")
    return name_arg(target), path_arg(path)


def _epilog(name: str) -> str:
    return "examples:\n" + EXAMPLES[name].rstrip() + "\n\n" + EXIT_TEXT


def parser() -> Parser:
    top = Parser(prog=PROG, allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter,
                 description="Create, list, inspect, rename, revert, delete and prune snapshots of libvirt domains, "
                             "through libvirt's API (never qemu-img on an image in use). list, info, dumpxml "
                             "(without --security-info), chain and prune --dry-run only read, on a read-only "
                             "connection; the others open a read-write one.",
                 epilog=_epilog(""))
    top.add_argument("-V", "--version", action="version", version=f"%(prog)s {__version__}")
    common = common_options(top)
    subs = top.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def sub(name: str, helptext: str, func: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
        p = subs.add_parser(name, help=helptext, description=helptext, parents=[common], allow_abbrev=False,
                            formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_epilog(name))
        p.set_defaults(func=func)
        return p

    p = sub("create", "create a snapshot: internal (running with memory, or shut off) or --disk-only external overlays",
            cmd_create)
    p.add_argument("domain", type=domain_arg)
    p.add_argument("name", type=name_arg, nargs="?", help="snapshot name (default: the creation time in seconds, as virsh)")
    p.add_argument("--description", type=text_arg, default="", help="free text kept with the snapshot")
    p.add_argument("--disk-only", action="store_true", help="external overlay per disk instead of an internal snapshot")
    p.add_argument("--diskspec", type=diskspec, action="append", default=[], metavar="DISK=PATH",
                   help="overlay file of one disk (default: beside its image, suffix replaced by the name)")
    p.add_argument("--quiesce", action="store_true",
                   help="freeze the guest's file systems through the guest agent (needs --disk-only); fail if it "
                        "does not answer")
    p.add_argument("--atomic", action="store_true", help="all disks or none")

    p = sub("list", "list the snapshots of a domain (name, created, state, location, age, parent)", cmd_list)
    p.add_argument("domain", type=domain_arg)
    p.add_argument("--tree", action="store_true", help="as a tree of parents and children")
    p.add_argument("--internal", action="store_true", help="only internal snapshots")
    p.add_argument("--external", action="store_true", help="only external snapshots")
    p.add_argument("--disk-only", action="store_true", help="only disk-only snapshots")
    p.add_argument("--json", action="store_true", help="JSON on stdout")

    p = sub("info", "details of one snapshot, like virsh snapshot-info", cmd_info)
    p.add_argument("domain", type=domain_arg)
    p.add_argument("name", type=name_arg)
    p.add_argument("--json", action="store_true", help="JSON on stdout")

    p = sub("dumpxml", "the snapshot's XML", cmd_dumpxml)
    p.add_argument("domain", type=domain_arg)
    p.add_argument("name", type=name_arg)
    p.add_argument("--security-info", action="store_true", help="include security-sensitive data (passwords)")

    p = sub("edit", "rename a snapshot or change its description (metadata; the tree is kept)", cmd_edit)
    p.add_argument("domain", type=domain_arg)
    p.add_argument("name", type=name_arg)
    p.add_argument("--rename", type=name_arg, metavar="NEW",
                   help="new name (external snapshots; an internal one only back to the tag its image holds)")
    p.add_argument("--description", type=text_arg, metavar="TEXT", help="new description")

    p = sub("revert", "revert a domain to a snapshot (internal; external from libvirt 9.9), once every disk's image "
                      "is checked to hold its tag", cmd_revert)
    p.add_argument("domain", type=domain_arg)
    p.add_argument("name", type=name_arg)
    state = p.add_mutually_exclusive_group()
    state.add_argument("--running", action="store_true", help="run the domain afterwards")
    state.add_argument("--paused", action="store_true", help="leave the domain paused afterwards")

    p = sub("delete", "delete a snapshot, its tag or its overlay, after checking the backing chain", cmd_delete)
    p.add_argument("domain", type=domain_arg)
    p.add_argument("name", type=name_arg, nargs="?")
    p.add_argument("--current", action="store_true", help="the current snapshot")

    p = sub("prune", "delete the oldest snapshots beyond a policy (never the current one or one another needs)",
            cmd_prune)
    p.add_argument("domain", type=domain_arg, nargs="?")
    p.add_argument("--all", action="store_true", help="every domain of the connection")
    p.add_argument("--older-than", type=strict_duration_arg, metavar="DURATION",
                   help="only snapshots older than this, with its unit (30s, 90m, 12h, 3d, 1w; a bare number is "
                        "refused)")
    p.add_argument("--keep", type=count_arg, metavar="N", help="keep the N newest snapshots")
    p.add_argument("--dry-run", action="store_true", help="say what would be deleted, delete nothing")
    p.add_argument("--json", action="store_true", help="JSON on stdout")
    p.add_argument("-v", "--verbose", action="store_true", help="also list the snapshots kept, and why")

    p = sub("chain", "each disk's backing chain (image, format, virtual size, disk size, backing file)", cmd_chain)
    p.add_argument("domain", type=domain_arg)
    p.add_argument("--json", action="store_true", help="JSON on stdout")
    return top


# --- helpers ---------------------------------------------------------------------------------------


def say(line: str) -> None:
    sys.stdout.write(line + "\n")


def log(line: str) -> None:
    sys.stderr.write(f"{PROG}: {line}\n")


def stamp(seconds: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S +0000", time.gmtime(seconds))


def size_text(value: int | None) -> str:
    if value is None:
        return "?"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            text = f"{size:.0f} {unit}" if unit == "B" or size == int(size) else f"{size:.3g} {unit}"
            return text if unit == "B" else f"{text} ({value} bytes)"
        size /= 1024
    return str(value)


def table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]


class Session:
    """One connection (read-write unless ``readonly``) and one domain, closed at the end."""

    def __init__(self, uri: str | None, domain: str | None, readonly: bool = False) -> None:
        self.conn = virt.connect(uri, readonly=readonly)
        try:
            self.dom = operations.lookup_domain(self.conn, domain) if domain else None
        except BaseException:
            self.conn.close()
            raise

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *_exc: object) -> None:
        with contextlib.suppress(api.Error):
            self.conn.close()

    @property
    def domain(self) -> api.Domain:
        assert self.dom is not None
        return self.dom


def find(snaps: list[Snapshot], dom: api.Domain, name: str) -> Snapshot:
    for snap in snaps:
        if snap.name == name:
            return snap
    raise NotFound(f"domain {dom.name()} has no snapshot named '{name}'")


# --- subcommands -----------------------------------------------------------------------------------


def cmd_create(o: argparse.Namespace) -> int:
    specs = dict(o.diskspec)
    req = operations.CreateRequest(o.name, o.description, o.disk_only, specs, o.quiesce, o.atomic)
    with Session(o.uri, o.domain) as s:
        snaps = operations.snapshots_of(s.domain)
        name, xml, flags, overlays = operations.plan_create(s.domain, snaps, req, time.time())
        snap = operations.create(s.domain, xml, flags, o.quiesce)
    if overlays:
        where = ", ".join(f"{ov.target} -> {ov.path}" for ov in overlays)
        say(f"created snapshot '{name}' of {o.domain}: external, disk-only ({where})")
    else:
        memory = " with memory" if snap.memory == "internal" else ""
        say(f"created snapshot '{name}' of {o.domain}: internal, {snap.state}{memory}")
    return EXIT_OK


def _filtered(o: argparse.Namespace, snaps: list[Snapshot]) -> list[Snapshot]:
    if o.internal and o.external:
        raise BadRequest("--internal and --external exclude each other")
    keep = []
    for snap in snaps:
        if o.internal and snap.location != "internal":
            continue
        if o.external and snap.location != "external":
            continue
        if o.disk_only and not snap.disk_only:
            continue
        keep.append(snap)
    return tree.ordered(keep)


def cmd_list(o: argparse.Namespace) -> int:
    with Session(o.uri, o.domain, readonly=True) as s:
        snaps = operations.snapshots_of(s.domain)
    now = time.time()
    chosen = _filtered(o, snaps)
    if o.json:
        kids = tree.children(snaps)
        say(json.dumps([tree.snapshot_record(x, o.domain, now, kids) for x in chosen], indent=1))
        return EXIT_OK
    if not chosen:
        say(f"no snapshots of {o.domain}" + (" match" if len(chosen) != len(snaps) else ""))
        return EXIT_OK
    if o.tree:
        for line in tree.tree_lines(chosen):
            say(line)
        return EXIT_OK
    rows = [["Name", "Created", "State", "Location", "Age", "Parent", "Current"]]
    for x in chosen:
        rows.append([x.name, stamp(x.created), x.state, x.location, format_age(now - x.created), x.parent or "-",
                     "yes" if x.current else ""])
    for line in table(rows):
        say(line)
    return EXIT_OK


def cmd_info(o: argparse.Namespace) -> int:
    with Session(o.uri, o.domain, readonly=True) as s:
        snaps = operations.snapshots_of(s.domain)
        snap = find(snaps, s.domain, o.name)
    now = time.time()
    kids = tree.children(snaps)
    if o.json:
        say(json.dumps(tree.snapshot_record(snap, o.domain, now, kids), indent=1))
        return EXIT_OK
    fields = [
        ("Name", snap.name), ("Domain", o.domain), ("Current", "yes" if snap.current else "no"),
        ("State", snap.state), ("Location", snap.location), ("Parent", snap.parent or "-"),
        ("Children", str(len(kids[snap.name]))), ("Descendants", str(len(tree.descendants(snap.name, kids)))),
        ("Metadata", "yes"), ("Created", stamp(snap.created)), ("Age", format_age(now - snap.created)),
    ]
    if snap.description:
        fields.append(("Description", snap.description))
    for disk in snap.disks:
        fields.append((f"Disk {disk.target}", disk.kind + (f" {disk.source}" if disk.source else "")))
    for key, value in fields:
        say(f"{key + ':':<16}{value}")
    return EXIT_OK


def cmd_dumpxml(o: argparse.Namespace) -> int:
    flags = api.VIR_DOMAIN_SNAPSHOT_XML_SECURE if o.security_info else 0
    with Session(o.uri, o.domain, readonly=not o.security_info) as s:  # libvirt shows secrets on read-write only
        handle = operations.lookup_snapshot(s.domain, o.name)
        try:
            xml = handle.getXMLDesc(flags)
        except api.Error as err:
            raise virt.translate(err, f"{o.domain}: snapshot {o.name}") from err
    sys.stdout.write(xml if xml.endswith("\n") else xml + "\n")
    return EXIT_OK


def cmd_edit(o: argparse.Namespace) -> int:
    if o.rename is None and o.description is None:
        raise BadRequest("edit needs --rename NEW or --description TEXT")
    with Session(o.uri, o.domain) as s:
        snaps = operations.snapshots_of(s.domain)
        find(snaps, s.domain, o.name)
        notes = operations.edit(s.domain, snaps, o.name, o.rename, o.description)
    for note in notes:
        say(note)
    return EXIT_OK


def cmd_revert(o: argparse.Namespace) -> int:
    with Session(o.uri, o.domain) as s:
        snap = find(operations.snapshots_of(s.domain), s.domain, o.name)
        started = time.monotonic()
        operations.revert(s.conn, s.domain, snap, o.running, o.paused)
        took = time.monotonic() - started
        try:
            state = s.domain.state()[0]
        except api.Error as err:
            raise virt.translate(err, f"{o.domain}: state") from err
    words = {api.VIR_DOMAIN_RUNNING: "running", api.VIR_DOMAIN_PAUSED: "paused",
             api.VIR_DOMAIN_SHUTOFF: "shut off"}.get(state, f"in state {state}")
    say(f"reverted {o.domain} to '{o.name}' in {took:.1f}s: the domain is {words}")
    return EXIT_OK


def cmd_delete(o: argparse.Namespace) -> int:
    if (o.name is None) == (not o.current):
        raise BadRequest("delete needs a snapshot NAME or --current (one of them)")
    with Session(o.uri, o.domain) as s:
        name = o.name or operations.current_name(s.domain)
        snaps = operations.snapshots_of(s.domain)
        find(snaps, s.domain, name)
        say(operations.delete(s.conn, s.domain, snaps, name))
    return EXIT_OK


def cmd_prune(o: argparse.Namespace) -> int:
    if o.all == (o.domain is not None):
        raise BadRequest("prune needs a DOMAIN or --all (one of them)")
    if o.older_than is None and o.keep is None:
        raise BadRequest("prune needs --older-than DURATION or --keep N (or both)")
    failed = 0
    report: list[dict[str, Any]] = []
    with Session(o.uri, o.domain, readonly=o.dry_run) as s:
        doms = operations.all_domains(s.conn) if o.all else [s.domain]
        now = time.time()
        for dom in doms:
            name = dom.name()
            try:
                snaps = operations.snapshots_of(dom)
            except NotFound:
                continue  # went away meanwhile
            except KvmError as err:
                log(str(err))
                failed += 1
                continue
            for step in policy.plan_prune(snaps, now, o.older_than, o.keep):
                snap = step.snapshot
                entry = {"domain": name, "name": snap.name, "created": snap.created,
                         "age_seconds": int(now - snap.created), "action": "keep", "why": step.why}
                report.append(entry)
                age = format_age(now - snap.created)
                if not step.delete:
                    if o.verbose and not o.json:
                        say(f"{name}: keep '{snap.name}' (age {age}): {step.why}")
                    continue
                if o.dry_run:
                    entry["action"] = "would delete"
                    if not o.json:
                        say(f"{name}: would delete '{snap.name}' (age {age}): {step.why}")
                    continue
                try:
                    fresh = operations.snapshots_of(dom)
                    done = operations.delete(s.conn, dom, fresh, snap.name)
                except KvmError as err:
                    entry["action"] = "failed"
                    entry["error"] = str(err)
                    log(f"{name}: could not delete '{snap.name}': {err}")
                    failed += 1
                    break  # its parents may depend on it: stop with this domain
                entry["action"] = "deleted"
                if not o.json:
                    say(f"{done} (age {age}): {step.why}")
    if o.json:
        say(json.dumps(report, indent=1))
    elif not any(e["action"] != "keep" for e in report):
        say("nothing to prune")
    return EXIT_FAILED if failed else EXIT_OK


def cmd_chain(o: argparse.Namespace) -> int:
    with Session(o.uri, o.domain, readonly=True) as s:
        infos = policy.chain_info(operations.domain_chains(s.domain))
    if o.json:
        say(json.dumps({t: [i._asdict() for i in layers] for t, layers in infos.items()}, indent=1))
        return EXIT_OK
    first = True
    for target, layers in infos.items():
        if not first:
            say("")
        first = False
        say(f"{target}: {len(layers)} image{'s' if len(layers) != 1 else ''}")
        for info in layers:
            say(f"  image: {info.path}")
            say(f"    file format: {info.format}")
            say(f"    virtual size: {size_text(info.virtual_size)}")
            say(f"    disk size: {size_text(info.disk_size)}")
            if info.backing:
                say(f"    backing file: {info.backing}")
    if first:
        say(f"{o.domain} has no disk with a file or block source")
    return EXIT_OK


def run(argv: list[str] | None = None) -> int:
    top = parser()
    options = settle(top, top.parse_args(argv))
    virt.set_default_timeout(options.timeout)
    return run_tool(PROG, lambda: int(options.func(options)), (BadRequest,))


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
