"""Supervised fine-tuning.  ``megatron_sft``: ``finetune_soda.py``, the megatron-core trainer with
``--sft``.  The ``deepspeed_*`` modules: fine-tuning outside megatron-core, SODA's HF ``Qwen3ForCausalLM`` on the SFT shards with
DeepSpeed ZeRO (one or a few GPUs, CPU offload) or plain torch, the megatron trainer's masking,
optimizer and schedule (docs/finetuning.md, "Fine-tuning with DeepSpeed").

``deepspeed_data`` (shards and windows, no megatron-core), ``deepspeed_model`` (model, loss, HF
output), ``deepspeed_optim`` (Cautious AdamC under ZeRO, the schedule), ``deepspeed_engine``
(DeepSpeed and plain-torch engines, checkpoints), ``deepspeed_main`` (the command).
"""
