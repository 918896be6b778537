"""Demos beyond the AlphaGo lesson (``aha demo NAME``): each module has ``run_demo(out, seed)``."""
