"""``python -m sparsecodes``: the command line, e.g. under ``torchrun ... -m sparsecodes train``."""

from sparsecodes.cli import main

if __name__ == "__main__":
    main()
