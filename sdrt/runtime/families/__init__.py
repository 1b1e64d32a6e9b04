"""Model families: what an export of each holds and how the loop drives it."""
