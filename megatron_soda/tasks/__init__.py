"""SODA's benchmarks as token sequences, independent of any model backend: the items of each
task (``items.py``, read from their public layouts by ``readers/``), the sequences a model scores
(``sequences.py``: the authors' prompts and which tokens count) and the scoring rules
(``scoring.py``).  Used by the standalone evaluator (:mod:`megatron_soda.eval`) and by the
trainer's in-training evaluation alike, so that both score exactly the same thing."""
