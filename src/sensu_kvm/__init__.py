"""sensu-plugins-kvm: Sensu and Nagios checks, metrics and tools for KVM guests under libvirt."""

__version__ = "0.1.0"

# Where checks that compute rates keep their samples between runs (--state-dir).
STATE_DIR = "/var/cache/sensu-plugins-kvm"
