import sys

from mirrorsync.cli import main

sys.exit(main())
