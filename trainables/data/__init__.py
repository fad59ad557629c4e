"""Data: the folder walk, image reading, the dataset and its split, the decoded-image cache
and its budget, images from a bucket.
"""
