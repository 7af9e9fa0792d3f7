"""`python -m p2psync.tracker IP PORT`: a classic tracker."""

import sys

from p2psync.tracker import main

sys.exit(main())
