"""Kubernetes manifests from the topology (``testbed k8s``); ``validate/`` checks them offline."""

from management.k8s.render import k8s_files, render_k8s

__all__ = ["k8s_files", "render_k8s"]
