"""Praxis layers for MoDE and its LoRA baseline."""
