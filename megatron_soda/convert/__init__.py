"""Checkpoint conversion between megatron_soda and Hugging Face (Qwen3ForCausalLM + SODA tokenizer).

* :mod:`~megatron_soda.convert.to_hf`: ``convert_to_hf`` (streams a checkpoint of any layout);
* :mod:`~megatron_soda.convert.from_hf`: ``convert_from_hf`` (SODA models, released ones
  included, or a warm start from a Qwen3 text model as the authors did) at a chosen TP/PP layout;
* :mod:`~megatron_soda.convert.loss_check`: ``check_hf_loss`` (held-out loss vs the trainer's);
* building blocks: ``names`` (mapping, fused layouts), ``dist_reader`` (reading ``torch_dist``
  without a process group), ``safetensors_io``, ``hf_config``, ``hf_rope`` (RoPE both ways),
  ``hf_tokenizer`` (SODA/release tokenizers, the authors' Qwen3x warm-start ids), ``hf_weights``,
  ``runtime``/``worker`` (megatron on the CPU);
* :mod:`~megatron_soda.convert.cli`: the ``tools/checkpoint/`` scripts' ``main`` functions.

See docs/conversion.md.  Submodules are imported on demand (most need torch, some megatron).
"""
