"""What happens to client updates between the client and the strategy: privacy, compression, secure sums.

Each stage is a small plugin chosen in the scenario and applied by the engine in a fixed
order (see docs/explanation-architecture.md, "The server pipeline"). This package is numpy
only; libraries a stage needs (e.g. a privacy accountant) are imported on first use.
"""
