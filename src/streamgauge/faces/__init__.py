"""Faces: wire formats in, core calls, wire formats out."""
