"""``python -m shallowkern``: the same command as the ``shallowkern`` console script."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
