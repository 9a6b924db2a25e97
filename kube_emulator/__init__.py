"""A small, honest emulator of the Kubernetes API server for capo-operator's tests and demo.

Not part of the product: it must never import ``capo_operator``. See ``kube_emulator.testing`` for
the test harness and ``python -m kube_emulator --help`` for the command line.
"""

from .server import EmulatorServer, Options

__all__ = ["EmulatorServer", "Options"]
