"""Scores: the image metrics (PixCorr, SSIM, MSE, CLIP score: :mod:`.image`), identification
(:mod:`.identification`), the perceptual ones (:mod:`.perceptual`), a reconstruction's scores
(:mod:`.scoring`), the callbacks that watch training (:mod:`.callbacks`, :mod:`.timing`, :mod:`.probe`) and
the closed-form ridge (:mod:`.ridge`).

At the bottom beside ``models/``: it imports nothing else of the package.
"""
