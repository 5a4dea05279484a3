"""Perceptual hashing, evaluation-set indexes and near-duplicate search.

* :mod:`dedup.phash`: pHash (imagehash-compatible) and the robust hash columns / eval variants.
* :mod:`dedup.mih`: exact Hamming-radius search by multi-index hashing (numba-compiled when available).
* :mod:`dedup.search`: the plain brute-force :class:`~dedup.search.HashIndex` (pHash and its mirror).
* :mod:`dedup.match`: the robust two-stage detector (candidate search, DCT sign-hash verification).
* :mod:`dedup.sources`: ImageFolder / WebDataset / parquet readers.
* :mod:`dedup.index`: ``wit eval-index`` (:func:`~dedup.index.build_eval_index`) and index loading.
* :mod:`dedup.run`: ``wit dedup`` (:func:`~dedup.run.run_dedup`) over any WebDataset shards.
"""
