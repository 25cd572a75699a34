"""Builders for each op; importing this package fills the registry."""
from . import conv, cudnn, frameworks, persistent, rnn  # noqa: F401
