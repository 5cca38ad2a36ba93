"""Feature grids to tokens (k-means codebook) and tokens back to images (decoder, palette)."""
