"""CNN-token image GPT on CIFAR-10: the importable library behind the DVC stages."""
