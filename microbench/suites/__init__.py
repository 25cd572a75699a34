"""Named sets of problem shapes (ResNet-50 layers, DeepBench tables) the CLI's ``suite`` runs."""
