"""sensu-plugins-kvm: Sensu and Nagios checks, metrics and tools for KVM guests under libvirt."""

__version__ = "0.1.0"
