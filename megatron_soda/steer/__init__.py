"""Steering vectors derived from text (arXiv 2505.14071, code ``Woodygan/TextSteersVision``):
extract a direction from sentences with anchor words (:mod:`extract`), save it with the model's
fingerprint (:mod:`vectors`), add ``alpha x vector`` to one decoder layer's output at audio or
text positions while generating or scoring (:mod:`hooks`, :mod:`cli_args`).  docs/steering.md.

This package imports neither ``generate`` nor ``eval``: both import it (lazily)."""
