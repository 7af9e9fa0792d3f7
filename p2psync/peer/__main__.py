"""`python -m p2psync.peer TRACKER_IP TRACKER_PORT`: a classic peer in the current directory."""

import sys

from p2psync.peer import main

sys.exit(main())
