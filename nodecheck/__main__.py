import sys

from nodecheck.cli import main

sys.exit(main())
