"""Reusable FrEIA invertible modules for conditional normalizing flows (no SR knowledge)."""
