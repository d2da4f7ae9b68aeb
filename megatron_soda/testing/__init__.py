"""Test and demo fixtures, NOT the product: nothing else in ``megatron_soda`` imports this package
(``tests/test_layering.py`` places it above every product layer).

It serves the tests, the quickstart (``examples/quickstart.sh``), the benchmarks and the scaling
study with inputs that would otherwise have to be downloaded:

* :mod:`~megatron_soda.testing.sample_data`: a small real speech corpus (espeak-ng reading
  public-domain text from :mod:`~megatron_soda.testing.sample_text`) in the four input formats;
* :mod:`~megatron_soda.testing.bad_inputs`: corrupt and unusual inputs, labelled;
* :mod:`~megatron_soda.testing.checkpoints`: megatron_soda checkpoints with deterministic random
  weights, and the reference logits of a checkpoint;
* :mod:`~megatron_soda.testing.cli`: ``tools/preprocess/make_sample_data.py``
  (``soda-make-sample-data``).
"""
