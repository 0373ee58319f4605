"""Shared core, used by both sides: errors, configuration, versions, the backend registry, the
manifest, digests, device detection and the pure resolver. Imports nothing above it."""
