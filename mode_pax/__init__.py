"""MoDE on Pax/Praxis."""
