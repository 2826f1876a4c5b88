"""``python -m anndata_rnn`` (and ``torchrun -m anndata_rnn``) runs the command line."""

from .cli import main

if __name__ == "__main__":
    main()
