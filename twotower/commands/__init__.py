"""The command-line programs (twotower-train, -eval, -retrieve, -index, -plot, -sweep, -serve): Hydra entry
points that read a config, call the library and report errors in one line. The library itself is the rest
of the package: data, towers, losses, module, index, retrieval."""
