"""Package data, no code: the open_clip configs of the stand-in CLIP architectures (``clip/*.json``), which
:mod:`lightning_fcae.models.clip` registers with open_clip. It imports nothing.
"""
