"""Synthetic NSD-like benchmark: rendered shape scenes, captions and a simulated visual cortex."""

from .generate import GENERATOR_VERSION, generate
from .profiles import PROFILES, SynthProfile, get_profile

__all__ = ["GENERATOR_VERSION", "PROFILES", "SynthProfile", "generate", "get_profile"]
