"""Builders for each op; importing this package fills the registry."""
from . import conv, rnn  # noqa: F401
