"""Experiments as one command: a plan read and checked (:mod:`.plan`), the methods it compares
(:mod:`.methods`), the description of a run's tasks and stage configs (:mod:`.tasks`), the pipeline that
runs them (:mod:`.stage_runner`: one stage as a subprocess; :mod:`.evaluation`: the scores;
:mod:`.pipeline`: the chain), its preflight (:mod:`.preflight`, with :mod:`.preflight_findings`,
:mod:`.preflight_weights` and :mod:`.preflight_disk`), the progress and time left (:mod:`.progress`), one
pipeline per run folder (:mod:`.run_lock`) and the ridge yardstick beside the methods (:mod:`.yardstick`).

It may import every folder below it (``files/``, ``models/``, ``metrics/``, ``data/``, ``inference/``,
``stages/``, ``stand_ins/``); only the command line (``cli/``) imports it. Importing :mod:`.pipeline`
imports no torch, so ``lightning-fcae pipeline --help`` answers at once.
"""
