import sys

from mirrorsync.quick import main

sys.exit(main())
