"""The NVIDIA backend: NVML loading, fingerprint, health, reservation and stats engines."""
