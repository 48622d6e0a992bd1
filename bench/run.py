#!/usr/bin/env python3
"""Benchmark mirrorsync against mbsync and offlineimap: `python3 bench/run.py --help`.

See bench/README.md for what it does and what each phase means.
"""

import sys
from pathlib import Path

# Run as a script from anywhere: the repository root holds both `bench` and `mirrorsync`.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.runner import main

if __name__ == "__main__":
    sys.exit(main())
