"""NVML itself: which library, the session, the executor that runs calls under a deadline."""
