"""Codecs: how values become bytes. One module per codec; see :mod:`.base` for the protocol."""

from .base import Codec, Encoded
from .registry import AUTO_ORDER, CodecSet, register_codec, registered_codecs

__all__ = ["AUTO_ORDER", "Codec", "CodecSet", "Encoded", "register_codec", "registered_codecs"]
