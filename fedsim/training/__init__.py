"""Client training in PyTorch: model specs, the flat-parameter view, the client runtime, the evaluator.

The only package of the core that imports torch.
"""
