"""The image's HEALTHCHECK: healthy when the service of this container answers /readyz.

A container runs ui_iot (UI_PORT, default 8000) or ingest_iot (INGEST_PORT, default 8001);
whichever of the two answers 200 makes the container healthy. Standard library only.
"""

import os
import sys
import urllib.request

for name, default in (("UI_PORT", "8000"), ("INGEST_PORT", "8001")):
    url = f"http://127.0.0.1:{os.environ.get(name) or default}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=4) as response:  # noqa: S310 - a fixed http URL
            if response.status == 200:
                sys.exit(0)
    except OSError:
        continue
sys.exit(1)
