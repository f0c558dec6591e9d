"""MPMD launcher for MoDE (see launch/mpmd_launch.py)."""
