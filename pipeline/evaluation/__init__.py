"""How good images are: the evaluator network, reconstruction metrics, distribution distances."""
