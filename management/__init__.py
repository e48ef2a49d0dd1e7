"""The management plane: topology, registry, supervision, scaling, rolling deploys, the CLI."""

__version__ = "0.1.0"
