"""``python -m megatron_soda.scaling {plan,launch,collect,fit,predict,memory}``."""

import sys

from megatron_soda.scaling.cli import main

sys.exit(main())
