"""`python -m tunnelman` runs the command line."""

from tunnelman.cli.main import main

if __name__ == "__main__":
    main()
