"""`make demo`: the emulator, two operator replicas and a small stateful workload, narrated."""
