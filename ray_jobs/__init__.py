"""Ray entry points over the iicnet library: train (and later tune, evaluate, prep)."""
