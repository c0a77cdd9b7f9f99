"""Plumbing every other part writes and checks files through: writes a crash cannot leave half done
(:mod:`.atomic`), Lightning's checkpoints written that way (:mod:`.checkpoint_io`), and the sha256 of a
file (:mod:`.hashing`).

The bottom of the package: it imports nothing else of it, and anything may import it.
"""
