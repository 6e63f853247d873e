"""The RFC's two experiments, rerun: on the simulator (the default) or on real VMs."""
