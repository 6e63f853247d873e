"""End-to-end tests against real QEMU VMs with a real Linux guest (see scripts/build-guest)."""
