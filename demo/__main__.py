"""``python -m demo``: the walkthrough (``make demo``)."""

from __future__ import annotations

import sys

from demo.walkthrough import main

if __name__ == "__main__":
    sys.exit(main())
