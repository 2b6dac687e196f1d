"""Speed paths that rely on private internals of other libraries, each with a public fallback."""
