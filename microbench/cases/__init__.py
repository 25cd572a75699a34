"""Builders for each op; importing this package fills the registry."""
from . import backward, conv, conv_gpu, cudnn, custom, frameworks, onednn, persistent, rnn  # noqa: F401
