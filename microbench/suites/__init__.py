"""Named sets of problem shapes (ResNet-50 layers, DeepBench tables) the CLI's ``suite`` runs."""

# The one DeepBench commit every table here was compared against, entry by entry: its last
# (2020-08-11).  rnn_shapes.py and conv_shapes.py cite it; suite records carry it.
DEEPBENCH_COMMIT = "da81ba7"
