"""The tiny synthetic math world."""
