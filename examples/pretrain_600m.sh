#!/usr/bin/env bash
# SODA 600m with the paper's recipe: see examples/pretrain_soda.sh for every setting (all are
# environment variables) and for multi-node / Slurm use.  PRINT_ONLY=1 prints the command.
exec bash "$(dirname "${BASH_SOURCE[0]}")/pretrain_soda.sh" 600m "$@"
