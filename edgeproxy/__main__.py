import sys

from edgeproxy.cli import main

sys.exit(main())
