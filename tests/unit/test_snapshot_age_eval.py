"""check-kvm-snapshot-age's evaluation and the snapshot/backing-chain XML parsing (pure)."""

import re

from sensu_kvm import domxml
from sensu_kvm.checks.snapshot_age import judge_domain, parser
from sensu_kvm.output import Status
from sensu_kvm.snapshots import tree
from sensu_kvm.virt import DomainRecord


def domain(name: str) -> DomainRecord:
    """A domain's record without statistics, for the pure judge functions."""
    return DomainRecord(name, name, {})

SNAP = """<domainsnapshot><name>{name}</name><state>disk-snapshot</state><creationTime>{created}</creationTime>
<memory snapshot='no'/><disks><disk name='vda' snapshot='external' type='file'><driver type='qcow2'/>
<source file='{overlay}'/></disk><disk name='hdc' snapshot='no'/></disks>{parent}</domainsnapshot>"""

DOMAIN = """<domain type='qemu'><name>web1</name><devices>
<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{top}'/>
<backingStore type='file'><format type='qcow2'/><source file='/img/web1.qcow2'/><backingStore/></backingStore>
<target dev='vda' bus='virtio'/></disk>
<disk type='file' device='cdrom'><driver name='qemu' type='raw'/><target dev='hdc' bus='ide'/></disk>
</devices></domain>"""


def snap(name, created, overlay="/img/web1.snap1", parent=None):
    p = f"<parent><name>{parent}</name></parent>" if parent else ""
    return tree.parse_snapshot(SNAP.format(name=name, created=created, overlay=overlay, parent=p))


def test_parse_snapshot_and_chain():
    s = snap("snap1", 1000, parent="base")
    assert (s.name, s.created, s.state, s.parent, s.location, s.disk_only) == (
        "snap1", 1000, "disk-snapshot", "base", "external", True)
    assert s.disks == (tree.SnapDisk("vda", "external", "/img/web1.snap1"), tree.SnapDisk("hdc", "no", ""))
    chains = domxml.chains(DOMAIN.format(top="/img/web1.snap1"))
    assert chains == {"vda": [domxml.Layer("/img/web1.snap1", "qcow2"), domxml.Layer("/img/web1.qcow2", "qcow2")]}


def opts(*argv):
    return parser().parse_args(list(argv))


def test_ages_and_counts():
    now = 10 * 86400
    snaps = [snap("a", now - 4 * 86400), snap("b", now - 3600)]
    chains = domxml.chains(DOMAIN.format(top="/img/web1.snap1"))
    verdict = judge_domain(domain("web1"), snaps, chains, now, opts())
    assert verdict.finding.status is Status.WARNING
    assert verdict.finding.text == "web1: 2 snapshots, oldest 'a' 4d old"
    labels = {p.label: p.value for p in verdict.perfdata}
    assert labels == {"web1_snapshots": 2, "web1_oldest_age": 4 * 86400, "web1_newest_age": 3600,
                      "web1_chain_depth_vda": 2}
    assert judge_domain(domain("web1"), snaps, chains, now, opts("-c", "2d")).finding.status is Status.CRITICAL
    assert judge_domain(domain("web1"), snaps, chains, now, opts("-w", "5d", "--count-warning", "1")).finding.status \
        is Status.WARNING


def test_overlay_no_snapshot_knows_is_a_warning():
    chains = domxml.chains(DOMAIN.format(top="/img/web1.backup-overlay"))
    verdict = judge_domain(domain("web1"), [], chains, 0, opts())
    assert verdict.finding.status is Status.WARNING
    assert verdict.finding.text == ("web1: no snapshots; vda runs on /img/web1.backup-overlay, "
                                    "an overlay no snapshot knows about")
    allowed = opts("--allow-backing", re.escape("/img/web1.qcow2"))
    assert judge_domain(domain("web1"), [], chains, 0, allowed).finding.status is Status.OK
