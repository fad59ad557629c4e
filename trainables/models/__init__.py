"""Models: the registry (timm by name and the project's own CNN), preprocessing,
augmentation, the footprint and its limits, export and inference.
"""
