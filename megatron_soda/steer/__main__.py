import sys

from megatron_soda.steer.cli import main

sys.exit(main())
