"""Reusable nn.Modules and structures shared by the methods."""
