"""The dataset format and how it is read: one format for synthetic and real data (:mod:`.schema`), written
only through ``DatasetWriter`` (:mod:`.writer`), decoded and checked by :mod:`.shards` and streamed by
``NSDDataModule`` (:mod:`.datamodule`, with :mod:`.transforms`); the synthetic benchmark
(:mod:`.synthetic`), the NSD converter (:mod:`.nsd`, :mod:`.nsd_sources`), the ridge sanity check
(:mod:`.check`) and a dataset's summary (:mod:`.inspect`).

The DataModule streams whatever per-image features a stage hands it and knows nothing of models: this
folder may import ``files/`` (hashes), ``metrics/`` (the ridge of the check) and the package's version.
"""
