"""Reads finished search results: rank trials, retrain and test the best configuration."""
