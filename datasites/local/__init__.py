"""The local federation `launch.py` runs: several hospitals on one machine, their processes,
and the source data each is seeded with (generated or a share of real files).
"""
