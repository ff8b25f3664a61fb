"""pdbench: reproduce and measure SGLang PD-disaggregated, wide-EP DeepSeek serving on Slurm."""

__version__ = "0.1.0"
