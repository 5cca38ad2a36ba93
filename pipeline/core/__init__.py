"""Plumbing every stage shares: atomic writes, artifact files, hashing, checkpoints, progress, devices, plots."""
