"""Finding domains: by name, UUID or ID, all of them, the autostart ones."""

from __future__ import annotations

from typing import Any

import libvirt

from sensu_kvm import activity
from sensu_kvm.errors import NotFound
from sensu_kvm.virt.errors import translate


def lookup_domain(conn: Any, name: str) -> Any:
    """The domain named ``name``; NotFound ("no domain named 'x'") when there is none."""
    try:
        return conn.lookupByName(name)
    except libvirt.libvirtError as err:
        if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            raise NotFound(f"no domain named '{name}'") from err
        raise translate(err, f"domain {name}") from err


def domain_by_any(conn: Any, text: str) -> Any:
    """The domain whose name, UUID or (for a number) ID is ``text``, like virsh."""
    for how in (conn.lookupByName, conn.lookupByUUIDString):
        try:
            return how(text)
        except libvirt.libvirtError as err:
            if err.get_error_code() not in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_INVALID_ARG):
                raise translate(err, f"looking up {text}") from err
    if text.isascii() and text.isdigit() and len(text) <= 10 and int(text) < 2**31:  # a domain ID is a C int
        try:
            return conn.lookupByID(int(text))
        except libvirt.libvirtError as err:
            if err.get_error_code() not in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_INVALID_ARG):
                raise translate(err, f"looking up {text}") from err
    raise NotFound(f"no domain named '{text}'")


def all_domains(conn: Any) -> list[Any]:
    """Every domain of the connection, sorted by name."""
    try:
        return sorted(conn.listAllDomains(0), key=lambda d: d.name())
    except libvirt.libvirtError as err:
        raise translate(err, "cannot list domains") from err


def autostart_uuids(conn: Any) -> set[str]:
    """UUIDs of the domains marked autostart, in one call."""
    activity.doing("listing autostart domains")
    try:
        doms = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_AUTOSTART)
    except libvirt.libvirtError as err:
        raise translate(err, "cannot list autostart domains") from err
    return {dom.UUIDString() for dom in doms}


def metadata_element(dom: Any, namespace: str) -> str | None:
    """The domain's <metadata> element in ``namespace`` as XML text (virDomainGetMetadata, allowed
    on a read-only connection), or None when it has none."""
    try:
        return dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, namespace, 0)
    except libvirt.libvirtError as err:
        if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_METADATA:
            return None
        raise translate(err, f"reading the metadata of {dom.name()}") from err


def is_autostart(dom: Any) -> bool:
    try:
        return bool(dom.autostart())
    except libvirt.libvirtError as err:
        raise translate(err, f"reading the autostart flag of {dom.name()}") from err


def qemu_log(uri: str, name: str, log_dir: str, tail: int) -> tuple[bool, str | None]:
    """The last ``tail`` bytes of the domain's QEMU log (libvirt's ``<log_dir>/<name>.log``) when
    ``uri`` is the local system hypervisor: (whether the log could be looked at, its text or None).
    A remote URI or a log this user may not read gives (False, None); no log gives (True, None)."""
    import os  # noqa: PLC0415 (only the handler reads a log)
    from urllib.parse import urlsplit  # noqa: PLC0415

    parts = urlsplit(uri)
    if parts.scheme not in ("qemu", "qemu+unix") or parts.netloc or parts.path != "/system":
        return False, None
    try:
        fd = os.open(os.path.join(log_dir, f"{name}.log"), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return True, None
    except OSError:
        return False, None
    with os.fdopen(fd, "rb") as log:
        size = os.fstat(log.fileno()).st_size
        log.seek(max(size - tail, 0))
        return True, log.read(tail).decode("utf-8", "replace")
