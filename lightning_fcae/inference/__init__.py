"""fMRI into images with trained models: DDIM sampling (:mod:`.sampling`), the diffusers pipeline
``FMRIReconstructionPipeline`` (:mod:`.reconstruction_pipeline`, built from a stage-3 checkpoint or an
export) and a split's reconstructions, saved and scored (:mod:`.reconstruct`, ``lightning-fcae
reconstruct``; its options: :mod:`.parser`).

It may import ``files/``, ``models/``, ``metrics/`` and ``data/``; the stages sample through it (stage 3's
validation images), so it imports nothing of ``stages/`` or above. Importing this folder imports nothing
(the parser is read before torch is).
"""
