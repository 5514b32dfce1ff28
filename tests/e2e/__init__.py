"""Helpers for the end-to-end tests: the release wheel, and a real Nomad agent."""
