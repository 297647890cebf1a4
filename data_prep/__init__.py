"""data_prep: DREAM files in, validated memory-mappable arrays out. Knows files and arrays only."""

from data_prep.dream_format import DreamFormatError, read_blocks
from data_prep.prepare import PreparedData, PreparedDataError, check_prepared, prepare
from data_prep.synth import ensure_synthetic, synthesize, write_synthetic

__all__ = [
    "DreamFormatError",
    "PreparedData",
    "PreparedDataError",
    "check_prepared",
    "ensure_synthetic",
    "prepare",
    "read_blocks",
    "synthesize",
    "write_synthetic",
]
