"""`python -m resbench`: the same command line as the `resbench` script."""

from resbench.cli import main

if __name__ == "__main__":
    main()
