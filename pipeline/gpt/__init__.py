"""The GPT over token grids: model, training, likelihood, sampling."""
