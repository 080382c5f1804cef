"""`python -m bench` runs resgraph's benchmarks."""

import sys

from bench.run import main

sys.exit(main())
