"""quantgate: evaluation and quality gates for quantized LLM artifacts.

Importing this package must stay cheap: no torch, llama.cpp or MLflow here.
"""

__version__ = "0.1.0"
