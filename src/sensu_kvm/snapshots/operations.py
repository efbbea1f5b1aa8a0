"""The libvirt-facing flows of kvm-snapshot: lookups, create, edit, revert, delete; one thing each."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import NamedTuple

from sensu_kvm import activity, domxml, virt
from sensu_kvm.domxml import xml_escape, xml_quoteattr
from sensu_kvm.errors import BadRequest, KvmError, LibvirtFailure, NotFound, Refused
from sensu_kvm.qcow2 import image_snapshots, read_image
from sensu_kvm.snapshots.policy import (
    COMMITTED,
    EXTERNAL_REVERT_VERSION,
    GONE_OVERLAY,
    Overlay,
    chain_paths,
    chain_problems,
    default_overlay,
    delete_problem,
    held_tags,
    internal_parts,
    overlay_needs,
    overlays_gone,
    rename_problem,
    revert_problem,
    tag_below_problem,
    tag_gone,
)
from sensu_kvm.snapshots.tree import (
    Layer,
    Snapshot,
    by_name,
    children,
    parse_snapshot,
    read_snapshots,
    saved_disks,
    set_description,
    set_name,
    set_parent,
)
from sensu_kvm.space import space_problems, statvfs_free
from sensu_kvm.virt import api
from sensu_kvm.virt.versions import version_text

# --- libvirt ------------------------------------------------------------------------------------


def lookup_domain(conn: api.Connect, name: str) -> api.Domain:
    try:
        return conn.lookupByName(name)
    except api.Error as err:
        if err.get_error_code() == api.VIR_ERR_NO_DOMAIN:
            raise NotFound(f"no domain named '{name}'") from err
        raise virt.translate(err, f"domain {name}") from err


def lookup_snapshot(dom: api.Domain, name: str) -> api.DomainSnapshot:
    try:
        return dom.snapshotLookupByName(name, 0)
    except api.Error as err:
        if err.get_error_code() == api.VIR_ERR_NO_DOMAIN_SNAPSHOT:
            raise NotFound(f"domain {dom.name()} has no snapshot named '{name}'") from err
        raise virt.translate(err, f"{dom.name()}: snapshot {name}") from err


def current_name(dom: api.Domain) -> str:
    try:
        if not dom.hasCurrentSnapshot(0):
            raise NotFound(f"domain {dom.name()} has no current snapshot")
        return dom.snapshotCurrent(0).getName()
    except api.Error as err:
        raise virt.translate(err, f"{dom.name()}: current snapshot") from err


def snapshots_of(dom: api.Domain) -> list[Snapshot]:
    activity.doing(f"reading the snapshots of {dom.name()}")
    try:
        return read_snapshots(dom)
    except api.Error as err:
        raise virt.translate(err, f"{dom.name()}: cannot read snapshots") from err


def domain_chains(dom: api.Domain) -> dict[str, list[Layer]]:
    try:
        return domxml.chains(dom.XMLDesc(0))
    except api.Error as err:
        raise virt.translate(err, f"{dom.name()}: cannot read the domain XML") from err


def is_active(dom: api.Domain) -> bool:
    try:
        return bool(dom.isActive())
    except api.Error as err:
        raise virt.translate(err, f"{dom.name()}: state") from err


def disk_formats(dom: api.Domain) -> dict[str, tuple[str, str]]:
    """(format, top image) of each disk with a source (CD-ROMs and empty drives left out)."""
    try:
        xml = dom.XMLDesc(0)
    except api.Error as err:
        raise virt.translate(err, f"{dom.name()}: cannot read the domain XML") from err
    return {d.target: (d.format or "raw", d.path) for d in domxml.disks(xml) if d.device == "disk" and d.path}


class CreateRequest(NamedTuple):
    name: str | None
    description: str
    disk_only: bool
    diskspecs: dict[str, str]  # target -> overlay path
    quiesce: bool
    atomic: bool


def plan_create(dom: api.Domain, snaps: list[Snapshot], req: CreateRequest, now: float,
                free_of: Callable[[str], tuple[int, int]] = statvfs_free) -> tuple[str, str, int, list[Overlay]]:
    """Check a create request and build (name, XML, flags, overlays); raises BadRequest/Refused."""
    name = req.name or str(int(now))  # virsh's default: the creation time in seconds
    if any(s.name == name for s in snaps):
        raise BadRequest(f"domain {dom.name()} already has a snapshot named '{name}'")
    if req.quiesce and not req.disk_only:
        raise BadRequest("--quiesce needs --disk-only (libvirt freezes file systems for disk-only snapshots only)")
    if req.diskspecs and not req.disk_only:
        raise BadRequest("--diskspec needs --disk-only")
    disks = disk_formats(dom)
    unknown = sorted(set(req.diskspecs) - set(disks))
    if unknown:
        raise BadRequest(f"--diskspec names no disk of {dom.name()}: {', '.join(unknown)} (disks: {', '.join(disks)})")
    flags = api.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC if req.atomic else 0
    overlays: list[Overlay] = []
    body = f"<name>{xml_escape(name)}</name>"
    if req.description:
        body += f"<description>{xml_escape(req.description)}</description>"
    if req.disk_only:
        flags |= api.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY
        if req.quiesce:
            flags |= api.VIR_DOMAIN_SNAPSHOT_CREATE_QUIESCE
        parts = []
        for target, (_fmt, image) in sorted(disks.items()):
            path = os.path.abspath(req.diskspecs.get(target) or default_overlay(image, name))
            if not os.path.isdir(os.path.dirname(path)):
                raise BadRequest(f"{target}: the folder of the overlay {path} does not exist")
            if os.path.exists(path):
                raise BadRequest(f"{target}: the overlay {path} already exists")
            size = read_image(image).virtual_size or 0
            overlays.append(Overlay(target, image, path, size))
            parts.append(f"<disk name={xml_quoteattr(target)} snapshot='external'><source file={xml_quoteattr(path)}/></disk>")
        body += "<disks>" + "".join(parts) + "</disks>"
        problems = space_problems(overlay_needs(overlays), free_of)
        if problems:
            raise Refused("; ".join(problems))
    else:
        raw = sorted(t for t, (fmt, _image) in disks.items() if fmt != "qcow2")
        if raw:
            target = raw[0]
            image = disks[target][1]
            raise BadRequest(
                f"{target} is a {disks[target][0]} image ({image}) and cannot hold internal snapshots: convert it "
                f"while the domain is shut off (qemu-img convert -O qcow2 {image} {os.path.splitext(image)[0]}.qcow2, "
                f"then point the disk at it with virsh edit), or use --disk-only")
    return name, f"<domainsnapshot>{body}</domainsnapshot>", flags, overlays


def create(dom: api.Domain, xml: str, flags: int, quiesce: bool) -> Snapshot:
    activity.doing(f"creating a snapshot of {dom.name()}")
    try:
        snap = dom.snapshotCreateXML(xml, flags)
        return parse_snapshot(snap.getXMLDesc(0), bool(snap.isCurrent()))
    except api.Error as err:
        if quiesce and ("agent" in virt.reason(err).lower()):
            raise Refused(f"{dom.name()}: --quiesce: the guest agent did not answer ({virt.reason(err)}); "
                          f"no snapshot made (run without --quiesce for a crash-consistent one)") from err
        raise virt.translate(err, f"{dom.name()}: cannot create the snapshot") from err


def redefine(dom: api.Domain, xml: str, current: bool, what: str) -> None:
    flags = api.VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE
    if current:
        flags |= api.VIR_DOMAIN_SNAPSHOT_CREATE_CURRENT
    try:
        dom.snapshotCreateXML(xml, flags)
    except api.Error as err:
        raise virt.translate(err, f"{dom.name()}: {what}") from err


def edit(dom: api.Domain, snaps: list[Snapshot], name: str, new: str | None, description: str | None) -> list[str]:
    """Rename and/or describe a snapshot; the tree and the current mark are kept. Returns notes."""
    index = by_name(snaps)
    snap = index[name]
    notes = []
    handle = lookup_snapshot(dom, name)
    try:
        xml = handle.getXMLDesc(api.VIR_DOMAIN_SNAPSHOT_XML_SECURE)
    except api.Error as err:
        raise virt.translate(err, f"{dom.name()}: snapshot {name}") from err
    if new is not None and new != name:
        held = held_tags(snap, saved_disks(xml), domain_chains(dom)) if internal_parts(snap) else None
        problem = rename_problem(snaps, name, new, held)
        if problem:
            raise BadRequest(problem)
    if description is not None:
        xml = set_description(xml, description)
        notes.append(f"description of '{name}' set")
        if internal_parts(snap):
            notes.append(f"only the metadata changed: the qcow2 image keeps the tag '{name}'")
    if new is None or new == name:
        redefine(dom, xml, snap.current, f"cannot update snapshot {name}")
        return notes
    activity.doing(f"renaming snapshot {name} of {dom.name()} to {new}")
    redefine(dom, set_name(xml, new), snap.current, f"cannot define snapshot {new}")
    moved = []
    try:
        for child in children(snaps)[name]:
            child_xml = lookup_snapshot(dom, child).getXMLDesc(api.VIR_DOMAIN_SNAPSHOT_XML_SECURE)
            redefine(dom, set_parent(child_xml, new), index[child].current, f"cannot reparent {child}")
            moved.append(child)
        lookup_snapshot(dom, name).delete(api.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY)
    except (api.Error, KvmError) as err:
        _undo_rename(dom, name, new, moved, index)
        text = virt.reason(err) if isinstance(err, api.Error) else str(err)
        raise LibvirtFailure(f"{dom.name()}: cannot rename {name} to {new} ({text}); left as it was") from err
    notes.append(f"renamed '{name}' to '{new}'" + (f"; children kept: {', '.join(moved)}" if moved else ""))
    return notes


def _undo_rename(dom: api.Domain, name: str, new: str, moved: list[str], index: dict[str, Snapshot]) -> None:
    try:
        for child in moved:
            child_xml = lookup_snapshot(dom, child).getXMLDesc(api.VIR_DOMAIN_SNAPSHOT_XML_SECURE)
            redefine(dom, set_parent(child_xml, name), index[child].current, f"cannot reparent {child}")
        lookup_snapshot(dom, new).delete(api.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY)
        if index[name].current:
            xml = lookup_snapshot(dom, name).getXMLDesc(api.VIR_DOMAIN_SNAPSHOT_XML_SECURE)
            redefine(dom, xml, True, f"cannot mark {name} current")
    except (api.Error, KvmError):
        pass  # the error about the rename is the one to report


STATES = {api.VIR_DOMAIN_RUNNING: "running", api.VIR_DOMAIN_PAUSED: "paused",
          api.VIR_DOMAIN_SHUTOFF: "shut off"}


def state_text(dom: api.Domain) -> str:
    try:
        state, reason = dom.state()
    except api.Error as err:
        return f"in an unknown state ({virt.reason(err)})"
    text = STATES.get(state, f"in state {state}")
    return text + (" (failed)" if state == api.VIR_DOMAIN_SHUTOFF and reason == api.VIR_DOMAIN_SHUTOFF_FAILED
                   else "")


def revert(conn: api.Connect, dom: api.Domain, snap: Snapshot, running: bool, paused: bool) -> None:
    """Revert to ``snap`` once every image libvirt will need is checked (revert_problem); a
    refusal changes nothing."""
    if snap.location == "external":
        libver = lib_version(conn)
        if libver < EXTERNAL_REVERT_VERSION:
            raise Refused(f"'{snap.name}' is an external snapshot and libvirt {version_text(libver)} cannot revert to "
                          f"those (9.9 and later can); nothing changed")
    handle = lookup_snapshot(dom, snap.name)
    activity.doing(f"checking the images of {dom.name()} for snapshot {snap.name}")
    try:
        saved = saved_disks(handle.getXMLDesc(0))
    except api.Error as err:
        raise virt.translate(err, f"{dom.name()}: snapshot {snap.name}") from err
    problem = revert_problem(snap, dom.name(), saved, domain_chains(dom), snapshots_of(dom), is_active(dom))
    if problem:
        raise Refused(problem)
    flags = 0
    if running:
        flags |= api.VIR_DOMAIN_SNAPSHOT_REVERT_RUNNING
    if paused:
        flags |= api.VIR_DOMAIN_SNAPSHOT_REVERT_PAUSED
    activity.doing(f"reverting {dom.name()} to {snap.name}")
    try:
        dom.revertToSnapshot(handle, flags)
    except api.Error as err:
        failure = virt.translate(err, f"{dom.name()}: cannot revert to {snap.name}")
        raise type(failure)(f"{failure}; the domain is now {state_text(dom)}") from err


def lib_version(conn: api.Connect) -> int:
    try:
        return int(conn.getLibVersion())
    except api.Error as err:
        raise virt.translate(err, "cannot read libvirt's version") from err


def delete_metadata(dom: api.Domain, handle: api.DomainSnapshot, name: str, why: str) -> str:
    try:
        handle.delete(api.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY)
    except api.Error as err:
        raise virt.translate(err, f"{dom.name()}: cannot delete the metadata of {name}") from err
    return f"deleted snapshot '{name}' of {dom.name()} as metadata only: {why}, no image changed"


def delete(conn: api.Connect, dom: api.Domain, snaps: list[Snapshot], name: str) -> str:
    """Delete one snapshot after the safety checks; returns what was done, in words."""
    snap = by_name(snaps)[name]
    disk_chains = domain_chains(dom)
    paths = chain_paths(disk_chains)
    if snap.location == "external" and overlays_gone(snap, paths):
        activity.doing(f"deleting the metadata of snapshot {name} of {dom.name()}")
        return delete_metadata(dom, lookup_snapshot(dom, name), name, GONE_OVERLAY)
    if snap.location == "internal" and tag_gone(snap, paths, image_snapshots):
        activity.doing(f"deleting the metadata of snapshot {name} of {dom.name()}")
        return delete_metadata(dom, lookup_snapshot(dom, name), name,
                               "no image of its disks holds its tag any more (removed outside libvirt)")
    libver, active = lib_version(conn), is_active(dom)
    problem = delete_problem(snaps, name, libver, disk_chains, domain=dom.name(), active=active)
    if problem is None and active and snap.location == "internal":
        problem = tag_below_problem(snap, paths, dom.name(), libver, image_snapshots)
    if problem:
        raise Refused(problem)
    handle = lookup_snapshot(dom, name)
    activity.doing(f"deleting snapshot {name} of {dom.name()}")
    try:
        handle.delete(0)
    except api.Error as err:
        if COMMITTED not in virt.reason(err):
            raise virt.translate(err, f"{dom.name()}: cannot delete {name}") from err
        return delete_metadata(dom, handle, name, GONE_OVERLAY)
    broken = chain_problems(domain_chains(dom))
    if broken:
        raise LibvirtFailure(f"{dom.name()}: deleted snapshot '{name}', but {'; '.join(broken)}")
    return f"deleted snapshot '{name}' of {dom.name()}"


def all_domains(conn: api.Connect) -> list[api.Domain]:
    try:
        return sorted(conn.listAllDomains(0), key=lambda d: d.name())
    except api.Error as err:
        raise virt.translate(err, "cannot list domains") from err
