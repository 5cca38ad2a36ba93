"""Frozen pre-trained encoders and the feature grids they make of every image (features.h5)."""
