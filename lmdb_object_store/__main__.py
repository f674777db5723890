"""`python -m lmdb_object_store`: runs the command line of ``lmdb_object_store._cli``."""

import sys

from lmdb_object_store._cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m lmdb_object_store"))
