"""Op handler families, one module each; importing a module registers its handlers."""
