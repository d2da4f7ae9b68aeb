import sys

from megatron_soda.eval.cli import main

if __name__ == "__main__":
    sys.exit(main())
