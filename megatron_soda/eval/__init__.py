"""SODA's evaluation suite: ``python -m megatron_soda.eval {prepare,pairs,likelihood,asr,tts}``
(docs/evaluation.md).  Item building and scoring rules live in :mod:`megatron_soda.tasks`;
this package holds the model backends, the runners, the scorers and the command line."""
