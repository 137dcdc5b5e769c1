"""Thin platform drivers that serve a vocker.view.ContainerView (FUSE on Linux/macOS; WinFsp later)."""
