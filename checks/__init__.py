"""The checks: one module each, installed as ``sensu_kvm.checks``."""
