"""A HashiCorp Nomad device plugin for NVIDIA GPUs.

The plugin itself is started by Nomad (see ``nomad_device_nvidia.cli``); the
public authoring API for device plugins in Python is ``nomad_device_nvidia.sdk``.
"""

from nomad_device_nvidia._native import __version__

__all__ = ["__version__"]
