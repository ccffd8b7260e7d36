"""A hospital's trusted code: its datasite, assets and mocks, and (next) the DP runtime,
privacy ledger and operator commands. Nothing here imports the scientist's library."""
