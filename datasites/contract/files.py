"""Files one side writes and the other reads: the local federation's directory.

`launch.py` writes them into the data dir; the scientist's `Federation.connect(data_dir)`
reads them (`scientist.connect`).
"""

FEDERATION_FILE = "federation.json"  # hospital names and URLs (no secrets)
CREDENTIALS_FILE = "credentials.json"  # the scientist's login at each hospital (mode 0600)
