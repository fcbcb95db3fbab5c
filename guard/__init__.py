"""nodeguard: host-level DoS protection for Kubernetes nodes."""

__version__ = "0.1.0"
