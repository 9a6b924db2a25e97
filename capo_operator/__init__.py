"""capo-operator: keeps the IPs of deleted or evicted stateful pods reserved in Calico."""

__version__ = "0.1.0"
