"""`python -m spat ...` (also what `torchrun -m spat` runs)."""

import sys

from spat.cli import main

if __name__ == "__main__":
    sys.exit(main())
