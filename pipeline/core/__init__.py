"""The ground floor: config contract, errors, storage, stats, the per-part stage skeleton and the executor.

Imports nothing else of the project; every other package may import it.
"""
