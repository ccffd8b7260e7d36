"""The operator's command line (`python -m datasites ...`) and its terminal formatting.
Nothing heavy is imported until a command runs, so `--help` loads neither torch nor syft.
"""
