"""Types of the Rust extension module (checked by mypy.stubtest)."""

__version__: str
