"""check-kvm-guest-agent's evaluation, the guest-info parsing and kvm-inspect's rendering (pure)."""

import json

from sensu_kvm import guestinfo
from sensu_kvm.checks.guest_agent import Answer, _normalise, human_bytes, judge_domain, judge_no_channel, judge_silent, parser
from sensu_kvm.errors import AccessDenied, AgentUnavailable, CallTimeout, LibvirtFailure, ReadOnlyRefused, Unsupported
from sensu_kvm.output import Status
from sensu_kvm.tools import inspect
from sensu_kvm.virt import DomainRecord


def domain(name: str) -> DomainRecord:
    """A domain's record without statistics, for the pure judge functions."""
    return DomainRecord(name, name, {})

# What virDomainGetGuestInfo returned for the rig's guest (spk.mode=agent,agentfs), plus a root
# file system and a squashfs as a real guest has them.
GUEST_INFO = {
    "os.id": "spk-rig", "hostname": "spk-guest", "timezone.name": "UTC", "timezone.offset": 0,
    "fs.count": 3,
    "fs.0.name": "vda", "fs.0.mountpoint": "/mnt/data", "fs.0.fstype": "ext2",
    "fs.0.total-bytes": 8121344, "fs.0.used-bytes": 7746560, "fs.0.disk.count": 1, "fs.0.disk.0.alias": "vda",
    "fs.1.name": "vdb1", "fs.1.mountpoint": "/", "fs.1.fstype": "ext4",
    "fs.1.total-bytes": 10 * 2**30, "fs.1.used-bytes": 4 * 2**30, "fs.1.disk.count": 0,
    "fs.2.name": "loop0", "fs.2.mountpoint": "/snap/core/1", "fs.2.fstype": "squashfs",
    "fs.2.total-bytes": 2**20, "fs.2.used-bytes": 2**20,
}

DOMAIN_XML = """<domain type='qemu'><name>web1</name><os><type arch='x86_64'>hvm</type></os><devices>
<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/img/web1.qcow2'/>
<target dev='vda' bus='virtio'/></disk>
<disk type='file' device='cdrom'><driver name='qemu' type='raw'/><target dev='hdc' bus='ide'/></disk>
<interface type='network'><mac address='52:54:00:00:00:01'/><source network='default'/>
<target dev='vnet0'/><model type='virtio'/></interface>
<channel type='unix'><source mode='bind' path='/run/x.sock'/>
<target type='virtio' name='org.qemu.guest_agent.0' state='disconnected'/></channel>
</devices></domain>"""


def opts(*argv):
    return _normalise(parser().parse_args(list(argv)))


def test_agent_channel_found_with_its_state():
    channel = guestinfo.agent_channel(DOMAIN_XML)
    assert channel == guestinfo.Channel("unix", "disconnected")
    assert channel.connected is False
    assert guestinfo.Channel("unix", "connected").connected is True
    assert guestinfo.Channel("unix", "").connected is None
    assert guestinfo.agent_channel("<domain><devices><channel type='spicevmc'>"
                                   "<target type='virtio' name='com.redhat.spice.0'/></channel></devices></domain>") is None


def test_file_systems_parsed_and_picked():
    found = guestinfo.file_systems(GUEST_INFO)
    assert [f.mountpoint for f in found] == ["/mnt/data", "/", "/snap/core/1"]
    assert found[0].disks == ("vda",) and found[1].disks == ()
    assert round(found[0].used_percent, 2) == 95.39
    assert guestinfo.FileSystem("/x", "", "ext4", None, None, ()).used_percent is None
    picked = guestinfo.pick_file_systems(found, [], list(guestinfo.DEFAULT_EXCLUDED_FS_TYPES))
    assert [f.mountpoint for f in picked] == ["/", "/mnt/data"]
    assert [f.mountpoint for f in guestinfo.pick_file_systems(found, ["/"], [])] == ["/"]
    assert [f.mountpoint for f in guestinfo.pick_file_systems(found, [], ["ext2", "ext4"])] == ["/snap/core/1"]
    assert guestinfo.file_systems({}) == []


def answer():
    return Answer(0.012, "7.2.22", guestinfo.file_systems(GUEST_INFO))


def test_nearly_full_file_system_is_critical_with_perfdata():
    verdict = judge_domain(domain("web1"), answer(), opts())
    assert verdict.finding.status is Status.CRITICAL
    assert verdict.finding.text == ("web1: agent 7.2.22 answered in 12 ms; /mnt/data 95.4% used of 7.7 MiB (CRITICAL); "
                                    "/ 40.0% used of 10.0 GiB")
    perf = [str(p) for p in verdict.perfdata]
    assert perf == ["web1_agent_ping=0.012s;;;0",
                    "web1_used_/=4294967296B;;;0;10737418240", "web1_used_pct_/=40%;90;95;0;100",
                    "web1_used_/mnt/data=7746560B;;;0;8121344", "web1_used_pct_/mnt/data=95.39%;90;95;0;100"]


def test_thresholds_mounts_and_types():
    assert judge_domain(domain("web1"), answer(), opts("-w", "96", "-c", "98")).finding.status is Status.OK
    assert judge_domain(domain("web1"), answer(), opts("-w", "95", "-c", "98")).finding.status is Status.WARNING
    only_root = judge_domain(domain("web1"), answer(), opts("--mount", "/"))
    assert only_root.finding.status is Status.OK and "/mnt/data" not in only_root.finding.text
    missing = judge_domain(domain("web1"), answer(), opts("--mount", "/", "--mount", "/var"))
    assert missing.finding.status is Status.CRITICAL
    assert "; /var not mounted (or not reported by the agent); / 40.0% used" in missing.finding.text
    squash = judge_domain(domain("web1"), answer(), opts("--exclude-fs-type", "ext2,ext4", "-w", "99", "-c", "99"))
    assert squash.finding.status is Status.CRITICAL and "/snap/core/1 100.0% used" in squash.finding.text


def test_no_file_systems_and_unreadable_ones():
    verdict = judge_domain(domain("tiny"), Answer(0.5, "", []), opts())
    assert verdict.finding.status is Status.OK
    assert verdict.finding.text == "tiny: agent answered in 500 ms; no file systems reported"
    broken = judge_domain(domain("tiny"), Answer(0.5, "7.2", [], "tiny: guest info: boom"), opts())
    assert broken.finding.status is Status.UNKNOWN
    assert broken.finding.text.endswith("file systems unreadable: tiny: guest info: boom")


def test_silent_agent_and_missing_channel():
    silent = judge_silent(domain("web1"), "web1: guest agent guest-ping: no answer within 2.5s", None, False)
    assert (silent.finding.status, silent.finding.text) == (
        Status.CRITICAL, "web1: guest agent does not answer: guest agent guest-ping: no answer within 2.5s")
    optional = judge_silent(domain("web1"), "QEMU guest agent is not connected", guestinfo.Channel("unix", "disconnected"), True)
    assert optional.finding.status is Status.WARNING
    assert "channel disconnected: is qemu-guest-agent installed and running in the guest?" in optional.finding.text
    assert judge_no_channel(domain("db1"), False).finding.status is Status.CRITICAL
    assert judge_no_channel(domain("db1"), True).finding.status is Status.WARNING


def test_options_defaults():
    o = opts()
    assert (o.warning.text, o.critical.text, o.mount, o.agent_timeout) == ("90", "95", [], None)
    assert o.exclude_fs_type == ["squashfs", "iso9660", "udf"]
    assert opts("--exclude-fs-type", "tmpfs", "--exclude-fs-type", "vfat,overlay").exclude_fs_type == ["tmpfs", "vfat", "overlay"]
    assert human_bytes(512) == "512 B" and human_bytes(1536) == "1.5 KiB"


def test_inspect_reasons_and_xml():
    disks, nics, channel, os_type = inspect._xml_devices(DOMAIN_XML)
    assert [d["target"] for d in disks] == ["vda", "hdc"] and disks[1]["source"] == ""
    assert nics == [{"type": "network", "mac": "52:54:00:00:00:01", "source": "default", "model": "virtio", "target": "vnet0"}]
    assert channel == guestinfo.Channel("unix", "disconnected") and os_type == "hvm"
    assert inspect.why(CallTimeout("x: no answer within 5s")).startswith("no answer in time")
    # by the class the classifier gave (from libvirt's error code), never by the message's words
    assert inspect.why(Unsupported("x: this function is not supported by the connection driver: virX")).startswith(
        "not supported by this hypervisor driver")
    assert inspect.why(ReadOnlyRefused("x: operation forbidden: read only access prevents virX")).startswith(
        "needs a read-write connection")
    assert inspect.why(AccessDenied("x: access denied")).startswith("no permission")
    assert inspect.why(AgentUnavailable("x: QEMU guest agent is not connected")).startswith("guest agent not answering")
    assert inspect.why(LibvirtFailure("x: QEMU guest agent is not connected")) == "x: QEMU guest agent is not connected"


def test_inspect_text_rendering():
    result = {"domain": "web1", "uri": "test:///default", "read_write": False, "sections": {
        "memory": inspect.section("Memory", {"max_kib": 1024, "balloon_kib": {"actual": 2048, "minor_fault": 7}}),
        "disks": inspect.section("Disks", [{"target": "vda", "capacity": 2**30, "io": {"rd_reqs": 3}}]),
        "monitor": inspect.section("QEMU monitor", None, "needs a read-write libvirt connection (--read-only given)"),
        "status": inspect.section("Multi", {"info block": "a\nb"}),
    }}
    text = inspect.render_text(result)
    assert text.splitlines() == [
        "kvm-inspect web1 on test:///default (read-only)", "",
        "== Memory", "  max_kib: 1024 (1.0 MiB)", "  balloon_kib:", "    actual: 2048 (2.0 MiB)", "    minor_fault: 7", "",
        "== Disks", "  - target: vda", "    capacity: 1073741824 (1.0 GiB)", "    io:", "      rd_reqs: 3", "",
        "== QEMU monitor: not available: needs a read-write libvirt connection (--read-only given)", "",
        "== Multi", "  info block:", "    | a", "    | b",
    ]
    assert json.loads(json.dumps(result)) == result
