"""Builders for each op; importing this package fills the registry."""
from . import rnn  # noqa: F401
