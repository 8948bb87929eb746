import sys

from nodecheck.entry.cli import main

sys.exit(main())
