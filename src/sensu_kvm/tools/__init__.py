"""Command-line tools that change domains on purpose (kvm-snapshot), not checks."""
