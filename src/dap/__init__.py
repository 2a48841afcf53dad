"""Depth Any Panoramas: metric depth for 360° equirectangular panoramas."""

__version__ = "0.1.0"
