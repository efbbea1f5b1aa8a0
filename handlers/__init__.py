"""The handlers: one module each, installed as ``sensu_kvm.handlers``."""
