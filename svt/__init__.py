"""svt-workflow: Self-supervised Video Transformer pipeline steps.

Each step is a module runnable as ``python -m svt.<step>`` with explicit arguments;
no module reads ``config.yaml`` itself (the Snakefile passes everything through params).
"""

__version__ = "0.1.0"
