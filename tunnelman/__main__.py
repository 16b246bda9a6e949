"""`python -m tunnelman` runs the command line (the warm path first, see `tunnelman.cli.lean`)."""

from tunnelman.cli.lean import main

if __name__ == "__main__":
    main()
