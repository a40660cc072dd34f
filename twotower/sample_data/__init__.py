"""Small real datasets bundled with the package."""
