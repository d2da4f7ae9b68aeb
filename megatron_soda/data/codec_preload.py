"""Imported once, by the fork server that forks the codec workers (``codec_workers.PRELOAD_MODULE``),
never by the workers or the main process themselves: torch, transformers' Mimi and the codec
stage's own modules, so that every worker starts with them imported (about 3.5 s each
otherwise) and shares their memory copy-on-write.

The collector is off while importing (:func:`megatron_soda.startup.collector_paused`), then
``gc.freeze()`` moves the imported objects to its permanent generation, so no collection in a
worker touches (and copies) their pages, and the server's and each worker's exit skips them;
forked workers collect as usual (the collector is back on before any fork)."""

import gc

from megatron_soda.startup import collector_paused

with collector_paused():
    import torch  # noqa: F401

    try:
        import transformers.models.mimi.modeling_mimi  # noqa: F401  (what audio/codec.py builds)
    except Exception:  # missing or broken: reported where the codec is built, not by a dead server
        pass

    import megatron_soda.audio.codec  # noqa: F401
    import megatron_soda.audio.mimi_lean  # noqa: F401
    import megatron_soda.audio.streaming  # noqa: F401
    import megatron_soda.data.codec_workers  # noqa: F401
    gc.freeze()
