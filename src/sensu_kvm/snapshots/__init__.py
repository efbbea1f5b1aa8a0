"""The snapshot engine behind ``kvm-snapshot`` (import the modules themselves): tree (parsing the
XML libvirt gives, pure), policy (what may be done, and the advice when not, pure), operations
(the libvirt-facing flows)."""
