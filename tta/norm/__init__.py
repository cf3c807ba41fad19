"""Normalization statistics: what BatchNorm normalizes with while a model adapts."""
