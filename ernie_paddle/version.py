"""The package version (read by the package and by export manifests)."""

__version__ = "0.1.0"
